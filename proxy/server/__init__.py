"""Processes: the worker (listener, sweep, reload, shutdown), the supervisor, TLS."""
