"""The demo's player page: dash.js playing the steered MPD, and who served what.

``GET /`` is ``static/index.html``; ``GET /demo.json`` tells it the MPD URL (steering's
rewritten MPD for this client), the explain and fleet URLs and each appliance's site and
metrics URL; ``GET /dash.all.min.js`` is dash.js from a local copy when there is one
(``$OCA_DASHJS``, or the copy ``npm ci`` puts in ``tests/browser/node_modules`` of a
source checkout, which ``make demo`` installs); otherwise the page loads dash.js from
unpkg.com.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
DASHJS_VERSION = "5.2.1"
DASHJS_CDN = f"https://unpkg.com/dashjs@{DASHJS_VERSION}/dist/modern/umd/dash.all.min.js"
_CHECKOUT_DASHJS = (
    Path(__file__).resolve().parents[2]
    / "tests/browser/node_modules/dashjs/dist/modern/umd/dash.all.min.js"
)


def find_dashjs() -> Path | None:
    """A local dash.js build, if any."""
    env = os.environ.get("OCA_DASHJS")
    for candidate in (Path(env) if env else None, _CHECKOUT_DASHJS):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def build_page_app(info: dict[str, Any], dashjs: Path | None) -> web.Application:
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{DASHJS}}", "dash.all.min.js" if dashjs else DASHJS_CDN)
    info_body = orjson.dumps(info)
    no_store = {"Cache-Control": "no-store"}

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", headers=no_store)

    async def demo_json(request: web.Request) -> web.Response:
        return web.Response(body=info_body, content_type="application/json", headers=no_store)

    async def dash(request: web.Request) -> web.StreamResponse:
        if dashjs is None:
            raise web.HTTPNotFound()
        return web.FileResponse(dashjs, headers={"Content-Type": "text/javascript"})

    async def favicon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/demo.json", demo_json)
    app.router.add_get("/dash.all.min.js", dash)
    app.router.add_get("/favicon.ico", favicon)
    return app
