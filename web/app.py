"""The Starlette app: the page, its WebSocket and a small stats endpoint.

The WebSocket accepts only the page's own origin, so another site open in the same browser
cannot drive the teacher's seat (a WebSocket is not protected by the same-origin policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from web.hub import Hub

STATIC_DIR = Path(__file__).parent / "static"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NO_CACHE = {"Cache-Control": "no-cache"}  # a reload always gets the page that matches the server


def same_origin(websocket: WebSocket) -> bool:
    origin, host = websocket.headers.get("origin"), websocket.headers.get("host")
    return bool(origin and host) and origin in (f"http://{host}", f"https://{host}")


def create_app(hub: Hub, background: list[Callable[[], Awaitable[None]]]) -> Starlette:
    """The app; each of ``background`` runs as a task while the app is up (e.g. the trial watcher)."""

    async def page(_request: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)

    async def stats(_request: Request) -> JSONResponse:
        return JSONResponse(hub.stats())

    async def websocket_endpoint(websocket: WebSocket) -> None:
        if not same_origin(websocket):
            hub.dropped["foreign_origin"] += 1
            await websocket.close(code=1008)  # before accept: the handshake gets HTTP 403
            return
        token = websocket.query_params.get("token", "")
        await websocket.accept()
        tab = hub.connect(token if TOKEN.match(token) else "")
        sender = asyncio.create_task(tab.run_sender(websocket.send_text, websocket.send_bytes))
        try:
            while not sender.done():
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                hub.receive(tab, message.get("text") if message.get("text") is not None else message.get("bytes"))
        finally:
            hub.disconnect(tab)
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(run()) for run in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/stats", stats),
            WebSocketRoute("/ws", websocket_endpoint),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        lifespan=lifespan,
    )
