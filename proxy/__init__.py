"""The proxy: listener, relay, pools, config, CLI and admin API (installed as ``mcplb.proxy``)."""
