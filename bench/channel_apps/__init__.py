"""Servers and the load client of bench/channels.py (channels: rtserve against python-socketio)."""
