"""mcplb: a load-balancing reverse proxy for MCP servers.

The top-level folders ``proxy/``, ``strategies/`` and ``healthcheck/`` install as
``mcplb.proxy``, ``mcplb.strategies`` and ``mcplb.healthcheck`` (see ``package-dir`` in
pyproject.toml). In a source checkout the links ``mcplb/proxy`` etc. point at those folders,
so tools that read files (mypy, pytest) see the same package names as an installed copy.
"""

__version__ = "0.1.0"
