"""Agents service (to come)."""
