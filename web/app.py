"""The Starlette app: the page, its WebSocket and a small stats endpoint.

Every request must name, in its Host header, one of the names the server really serves
(``served_hosts``): a page of another site whose name resolves to 127.0.0.1 (DNS rebinding) gets
HTTP 400, for the page, the static files, the stats and the WebSocket alike. The WebSocket also
accepts only the page's own origin, so another site open in the same browser cannot drive the
teacher's seat (a WebSocket is not protected by the same-origin policy). The number of open tabs
is capped (``Hub.admits``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from web.hub import Hub

STATIC_DIR = Path(__file__).parent / "static"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NO_CACHE = {"Cache-Control": "no-cache"}  # a reload always gets the page that matches the server
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
HOST_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?$")  # a name or an IPv4 address, "*.example.com" too
BACKGROUND_STOP_SECONDS = 2.0  # what the background tasks get to stop when the server stops


def host_name(host: str) -> str | None:
    """``host`` as a Host header gives it (IPv6 addresses in brackets, names in lower case); None if it is neither."""
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return host.lower() if HOST_NAME.match(host) else None
    return f"[{address}]" if address.version == 6 else str(address)


def served_hosts(bind_host: str, allowed_hosts: list[str]) -> list[str]:
    """The names a request may give in its Host header (with any port): this machine's, the bound address and ``allowed_hosts``.

    Raises ``ValueError`` for an entry of ``allowed_hosts`` that is not a host name or an IP address.
    """
    names = [*LOOPBACK_NAMES, host_name(bind_host) or bind_host.lower()]
    for host in allowed_hosts:
        name = host_name(host)
        if name is None:
            raise ValueError(
                f"web.allowed_hosts: {host!r} is not a host name or an IP address; give names without a scheme or a port, "
                'e.g. web.allowed_hosts=[teacher.lan,192.168.1.20] ("*.example.com" allows the subdomains)'
            )
        names.append(name)
    return list(dict.fromkeys(names))


def same_origin(websocket: WebSocket) -> bool:
    origin, host = websocket.headers.get("origin"), websocket.headers.get("host")
    return bool(origin and host) and origin in (f"http://{host}", f"https://{host}")


def create_app(hub: Hub, background: list[Callable[[], Awaitable[None]]], hosts: list[str]) -> Starlette:
    """The app; each of ``background`` runs as a task while the app is up (e.g. the trial watcher).

    ``hosts`` are the names the Host header may give (``served_hosts``).
    """

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
        token = token if TOKEN.match(token) else ""
        if not hub.admits(token):
            await websocket.close(code=1013)  # before accept: the handshake gets HTTP 403
            return
        await websocket.accept()
        tab = hub.connect(token)
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
            if tasks:  # bounded: stopping must never wait on a trial or a link
                await asyncio.wait(tasks, timeout=BACKGROUND_STOP_SECONDS)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/stats", stats),
            WebSocketRoute("/ws", websocket_endpoint),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)],
        lifespan=lifespan,
    )
