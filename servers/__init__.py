"""The mesh process and its services."""
