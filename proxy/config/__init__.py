"""The config schema, its YAML loader, and the checks `check` and `run` share."""
