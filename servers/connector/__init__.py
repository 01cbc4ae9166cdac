"""Connectors service (to come)."""
