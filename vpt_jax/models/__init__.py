"""Model definitions, looked up by name."""
