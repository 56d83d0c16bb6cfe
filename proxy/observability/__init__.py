"""Counters, the Prometheus exposition, and the access log."""
