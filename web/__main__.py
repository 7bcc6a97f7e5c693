"""``python -m web --orchestrator grpc://HOST:PORT [--port 8080] [--host 127.0.0.1] [--wait-for-teacher]``

Serves the teacher's page and plays the client ``teacher`` of the orchestrator's trials (with
``--wait-for-teacher``, only once a teacher's tab is open; ``web.watcher``). With
``--run-id`` and ``--model-registry`` it also follows the run's model (``web.training``). Prints
``Web page ready on http://HOST:PORT`` once it listens (``--port 0`` picks a free port; the
launcher reads the port from that line).

It stops on SIGTERM or Ctrl-C within ``SHUTDOWN_DEADLINE`` seconds, whatever its tabs, trials or
orchestrator link are doing: uvicorn closes the tabs, the background tasks get a bounded time to
leave their trials, and a process still alive at the deadline exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import sys
import threading

import cogment
import uvicorn

from apprentice import cog_settings
from apprentice.launcher import exit_with_parent
from web.app import create_app, served_hosts
from web.help_request import DEFAULT_HELP_TIMEOUT
from web.hub import DEFAULT_MAX_TABS, Hub
from web.keymaps import merged_key_maps, parse_key_maps
from web.teacher import WebTeacher
from web.training import TrainingFollower
from web.watcher import TrialWatcher

MAX_WEBSOCKET_MESSAGE_BYTES = 4096  # the page sends ~30-byte messages; a larger one closes the socket
GRACEFUL_SHUTDOWN_SECONDS = 1.5  # uvicorn's wait for open connections once it has asked them to close
SHUTDOWN_DEADLINE = 4.5  # seconds after SIGTERM or Ctrl-C: the process is gone by then, cleanly or not
log = logging.getLogger("web")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m web", description=__doc__.splitlines()[0])
    parser.add_argument("--orchestrator", required=True, help="the orchestrator, grpc://HOST:PORT")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--steps-per-second", type=float, default=30.0, help="pace of the trials the page plays")
    parser.add_argument(
        "--help-steps-per-second",
        type=float,
        help="pace while the agent asks for help, until the teacher answers (default: a third of --steps-per-second)",
    )
    parser.add_argument(
        "--help-timeout",
        type=float,
        default=DEFAULT_HELP_TIMEOUT,
        help=f"seconds a request for help waits for an answer before the agent plays on at the normal pace (default {DEFAULT_HELP_TIMEOUT:g})",
    )
    parser.add_argument(
        "--key-map",
        action="append",
        default=[],
        help='key maps as JSON, inline or @FILE: {"ENV_ID": {"KEY": [ACTION, "label"]}}; replaces that env\'s default',
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="another name the page may be opened by (Host header), besides 127.0.0.1, localhost, [::1] and --host",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_TABS,
        help=f"open tabs at most, the teacher's included (default {DEFAULT_MAX_TABS}); the teacher's tab is never refused",
    )
    parser.add_argument(
        "--wait-for-teacher",
        action="store_true",
        help="join a trial only once a teacher's tab is open (until then the trial stays PENDING)",
    )
    parser.add_argument("--run-id", help="play only the trials of this run (property apprentice_run_id)")
    parser.add_argument("--model-registry", help="grpc://HOST:PORT: show the training of the run's model (needs --run-id)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise SystemExit(f"Port {port} on {host} is in use: choose another with --port (web.port=... in main)") from None
        raise SystemExit(f"Cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


async def serve(args: argparse.Namespace) -> None:
    key_maps = {}
    try:
        for text in args.key_map:
            key_maps.update(parse_key_maps(text))
        hosts = served_hosts(args.host, args.allowed_host)
    except (ValueError, OSError) as error:
        raise SystemExit(str(error)) from None
    if args.max_connections < 1:
        raise SystemExit(f"--max-connections is {args.max_connections}: it must be at least 1, the teacher's tab (web.max_connections=32 in main)")
    try:
        hub = Hub(args.steps_per_second, args.max_connections, args.help_steps_per_second, args.help_timeout)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    sock = bind(args.host, args.port)

    context = cogment.Context(user_id="apprentice-web", cog_settings=cog_settings)
    teacher = WebTeacher(hub, merged_key_maps(key_maps))
    context.register_actor(impl=teacher.impl, impl_name="web", actor_classes=teacher.get_actor_classes())
    background = [TrialWatcher(context, args.orchestrator, hub, args.run_id, wait_for_teacher=args.wait_for_teacher).run]
    if args.model_registry and args.run_id:
        background.append(TrainingFollower(context, args.model_registry, args.run_id, hub).run)

    app = create_app(hub, background=background, hosts=hosts)
    config = uvicorn.Config(
        app,
        ws_max_size=MAX_WEBSOCKET_MESSAGE_BYTES,
        # Frames are JPEG, WebP or PNG: deflating them again gains nothing and was most of the
        # server's cost per tab (each tab's copy of every frame compressed on its own).
        ws_per_message_deflate=False,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        lifespan="on",
    )
    server = ServerWithDeadline(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if server.started:
        host, port = sock.getsockname()[:2]
        print(f"Web page ready on http://{host}:{port}", flush=True)
    await serving


class ServerWithDeadline(uvicorn.Server):
    """uvicorn's server, and a deadline on its shutdown once a signal asks it to stop.

    The clean shutdown is bounded on its own (``GRACEFUL_SHUTDOWN_SECONDS``, ``BACKGROUND_STOP_SECONDS``
    in ``web.app``); the deadline is the last resort, should a gRPC call or a tab hold it up anyway.
    """

    _deadline: threading.Timer | None = None

    def handle_exit(self, sig: int, frame) -> None:
        super().handle_exit(sig, frame)
        if self._deadline is None:
            self._deadline = threading.Timer(SHUTDOWN_DEADLINE, _exit_now, args=(signal.Signals(sig).name,))
            self._deadline.daemon = True
            self._deadline.start()


def _exit_now(signal_name: str) -> None:
    log.error("Still stopping %g s after %s: exiting now", SHUTDOWN_DEADLINE, signal_name)
    logging.shutdown()
    os._exit(1)


def main(argv: list[str] | None = None) -> None:
    exit_with_parent()
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then re-raises the Ctrl-C it caught
        pass


if __name__ == "__main__":
    main()
