"""The connection to a Redis that replicas share: one client per store (one server by URL,
or the master of a Sentinel service), and how a store notices, paces and reports failures."""
