"""The HTTP/1.1 relay: one connection object per client, one exchange per request."""
