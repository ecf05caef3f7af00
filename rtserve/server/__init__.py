"""The only code that touches transports: HTTP/1.1 connections, listeners, shutdown."""
