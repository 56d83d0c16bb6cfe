# syntax=docker/dockerfile:1
# The mcplb image: `docker build -t mcplb .`, then
#   docker run -p 8080:8080 -v ./mcplb.yaml:/etc/mcplb/config.yaml:ro mcplb
# tests/test_deploy.py runs this file's install and start commands in a fresh virtualenv
# and lints it with hadolint; see docs/deploy.md.

# --- build: the compiled build (mypyc) in a virtualenv with mcplb and its runtime deps ---
FROM python:3.12-slim-bookworm AS build

# No pip cache in a layer; no warning about the pip that comes with the base image.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A C compiler for mypyc's C, in this stage only (the base image has Python's headers).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
RUN python -m venv /opt/mcplb
COPY setup.py pyproject.toml README.md ./
COPY mcplb/__init__.py mcplb/py.typed ./mcplb/
COPY proxy ./proxy
COPY strategies ./strategies
COPY healthcheck ./healthcheck
# mcplb/ links to the folders, as in a checkout: mypyc names each module it compiles after
# its path (mcplb.proxy.relay.http11 ...).
RUN ln -s ../proxy ../strategies ../healthcheck mcplb/
# The compiler's virtualenv: mypy, setuptools and the stubs (the "compile" extra), and the
# runtime dependencies mypyc type-checks against (with a pure mcplb, unused).
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install ".[compile]"
# MCPLB_MYPYC=1: setup.py compiles the request path with mypyc (about 40% less CPU per
# request than pure Python); without a working compiler it says so in one line and builds
# pure. The wheel, then "mcplb" and not "mcplb[demo]" from it: the MCP SDK is the demo's,
# `mcplb run` never imports it. --version names the compiled modules (or "pure Python").
ENV MCPLB_MYPYC=1
RUN /opt/build/bin/pip wheel --no-build-isolation --no-deps --wheel-dir /src/dist . \
    && /opt/mcplb/bin/pip install /src/dist/mcplb-*.whl \
    && /opt/mcplb/bin/mcplb --version

# --- final: the virtualenv on a slim Python, no compiler or build tools, not root -----
FROM python:3.12-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mcplb" \
      org.opencontainers.image.description="Load-balancing reverse proxy for MCP servers, with session affinity" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric id: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 mcplb \
    && useradd --system --uid 10001 --gid mcplb --no-create-home --shell /usr/sbin/nologin mcplb

COPY --from=build /opt/mcplb /opt/mcplb
COPY deploy/docker/config.yaml /etc/mcplb/config.yaml

# Log lines leave at once (docker logs, kubectl logs); no .pyc files written at run time
# (the root filesystem may be read-only).
ENV PATH="/opt/mcplb/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001
EXPOSE 8080 9901

# Exec form: mcplb is PID 1 and gets SIGTERM itself (/readyz 503, shutdown_delay, drain)
# and SIGHUP (reload). Arguments after the image name replace CMD.
ENTRYPOINT ["mcplb", "run"]
CMD ["--config", "/etc/mcplb/config.yaml"]
