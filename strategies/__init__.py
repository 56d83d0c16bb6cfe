"""Balancing strategies: pure objects that pick a backend for a request."""
