"""The `rtserve` command line."""
