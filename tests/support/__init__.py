"""What the tests use and are not tests: real peers, raw clients, the tiers."""
