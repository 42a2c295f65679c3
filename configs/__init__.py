"""Config files: `get_config(arg)` functions that extend configs/default.py."""
