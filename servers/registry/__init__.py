"""Registry service: providers, capabilities, endpoints, leases and the watch stream."""
