"""Transports the router calls endpoints over: grpc, http, mcp and agent."""
