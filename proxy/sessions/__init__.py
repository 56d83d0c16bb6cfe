"""MCP session bindings: stores (memory, Redis), signed tokens, affinity."""
