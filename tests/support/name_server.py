"""A plain HTTP backend process for failure tests: answers its name; killable.

Run as ``python -m tests.support.name_server --name NAME --port PORT``.
"""

from __future__ import annotations

import argparse

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=args.name)

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/health", hello)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
