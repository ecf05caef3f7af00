"""Servers and the load client of bench/scale.py (channel fan-out on Redis, several workers)."""
