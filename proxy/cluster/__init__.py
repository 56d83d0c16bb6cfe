"""A backend set: the backends' live state, keep-alive pools, admission slots, DNS discovery."""
