"""Backend health checking (active probes and passive ejection)."""
