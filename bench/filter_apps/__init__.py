"""The server app of bench/filters.py."""
