"""The application layer of rtserve: routing, requests, responses and helpers."""
