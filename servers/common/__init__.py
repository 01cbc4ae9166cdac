"""Cross-cutting pieces shared by every service: settings, call context, errors, logs, storage, bus."""
