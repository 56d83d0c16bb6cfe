"""`mcplb demo`: demo MCP servers behind the proxy."""
