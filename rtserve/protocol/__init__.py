"""Sans-I/O protocol cores: bytes in, events out. No asyncio, no sockets."""
