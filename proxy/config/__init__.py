"""The config: its schema (schema.py), how YAML is read into it (loader.py, fields.py,
rules.py, checks.py, yaml_tree.py) and the checks beyond the file that `check` and `run`
share (validate.py)."""
