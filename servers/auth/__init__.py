"""Authentication (API keys, agent tokens), the permission table and the one audit log."""
