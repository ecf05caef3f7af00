"""Servers and the load client for bench/ws.py (WebSocket fan-out, echo, memory, hold)."""
