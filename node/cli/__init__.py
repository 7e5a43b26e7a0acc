"""The `ichtriage` command line."""
