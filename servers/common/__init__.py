"""Cross-cutting pieces shared by every mesh service: settings, call context, errors, logging, storage, bus."""
