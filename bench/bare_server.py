"""The ingest baseline: a bare aiohttp server that reads each POST body and answers 200.

Run as ``python -m bench.bare_server --port N`` (its own process, like the bridge), with the
same access-log setting as the bridge (off), so the ratio isolates what the bridge adds:
signature check, envelope parse, durable group-committed insert, metrics and a log line.
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def _accept(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "accepted"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/{tail:.*}", _accept)
    app.router.add_get("/readyz", _ready)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


async def _ready(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


if __name__ == "__main__":
    main()
