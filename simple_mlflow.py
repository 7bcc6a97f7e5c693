"""``python -m simple_mlflow``: MLflow's own tracking server and UI for Apprentice, on http://localhost:3000.

It runs ``mlflow server`` as a child process on the store that ``apprentice.metrics`` writes to
when no server is up: the SQLite database ``<data dir>/mlflow/mlflow.db`` and the artifact folder
``<data dir>/mlflow/artifacts`` (``data/`` of the project by default). So runs logged while the
server was down show up too. It prints one line, ``MLflow tracking server ready on http://...``,
once the server answers, and stops it with everything it started on Ctrl-C or SIGTERM.

Choices made for a 2-core machine: one uvicorn worker (``--workers``) is plenty for a browser and
a few training runs, and it runs at niceness 10 (``--nice``) so that training comes first; MLflow's
job runner (GenAI jobs, a dozen extra processes) stays off unless
``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set. MLflow 3's security middleware accepts the Host
headers and CORS origins of localhost and private IPs by default, which covers a browser on
http://localhost:3000 and clients on 127.0.0.1. Options this script does not know go to
``mlflow server`` unchanged, e.g. ``--allowed-hosts`` with ``--host 0.0.0.0``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from apprentice.launcher import exit_with_parent, free_port
from apprentice.metrics import (
    DEFAULT_DATA_DIR,
    DEFAULT_SERVER_PORT,
    MlflowStore,
    server_answers,
)

READY_TIMEOUT = 180.0  # s; a new store's schema migrations take a while on a busy machine
STOP_TIMEOUT = 15.0  # s for uvicorn to finish its requests before everything left is killed
PR_SET_PDEATHSIG = 1


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m simple_mlflow",
        description="Serve MLflow's tracking server and UI on Apprentice's MLflow store.",
        epilog="Other options are passed to `mlflow server`, e.g. --allowed-hosts or --cors-allowed-origins.",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_SERVER_PORT, help="HTTP port (default 3000, 0 picks a free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the project's data directory; the store is its mlflow/ (default data/)",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument(
        "--nice",
        type=int,
        default=10,
        help="the server's niceness: training comes first on a busy machine (default 10)",
    )
    return parser.parse_known_args(argv)


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound, as uvicorn would bind it (SO_REUSEADDR)."""
    family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return True
    return False


def mlflow_server_command(args: argparse.Namespace, store: MlflowStore, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", store.backend_uri,
        # New experiments keep artifacts in this folder, as a direct SQLite writer's do; clients on
        # this machine write there themselves, uploads through the server land there too.
        "--default-artifact-root", store.artifacts_dir.as_uri(),
        "--artifacts-destination", str(store.artifacts_dir),
        "--host", args.host,
        "--port", str(args.port),
        "--workers", str(args.workers),
        *extra,
    ]  # fmt: skip


def browser_url(host: str, port: int) -> str:
    """The URL to open, e.g. http://localhost:3000 for a loopback or wildcard address."""
    if host in ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost"):
        host = "localhost"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def probe_url(host: str, port: int) -> str:
    """The URL simple_mlflow checks: a wildcard address is reached through loopback."""
    host = {"0.0.0.0": "127.0.0.1", "localhost": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def start_server(command: list[str], niceness: int) -> subprocess.Popen:
    """``mlflow server`` in a process group of its own, so that it and its workers stop together
    and a Ctrl-C in the terminal reaches only simple_mlflow, which then stops them in order."""
    libc = ctypes.CDLL(None, use_errno=True)

    def in_child() -> None:
        # If simple_mlflow dies, even by SIGKILL, mlflow server gets SIGTERM: no orphaned server.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        # Storing a metric costs the server ~0.2 ms of CPU: on a busy machine, training goes first.
        os.nice(niceness)

    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    }
    return subprocess.Popen(
        command,
        stdout=sys.stderr.fileno(),  # our stdout carries only the ready line
        env=env,
        start_new_session=True,
        preexec_fn=in_child,
    )


def wait_until_ready(server: subprocess.Popen, url: str, stop: threading.Event) -> bool:
    """True once ``url`` answers; False if the server exits, ``stop`` is set or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT
    while server.poll() is None and not stop.is_set() and time.monotonic() < deadline:
        if server_answers(url, timeout=1.0):
            return True
        stop.wait(0.25)
    return False


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to ``mlflow server``, which passes it to uvicorn and exits after it; then whatever
    is left of its process group gets SIGTERM, then SIGKILL."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"simple_mlflow: mlflow server did not stop within {STOP_TIMEOUT:g} s, killing it", file=sys.stderr)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break  # nobody is left in the group
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _group_alive(server):
            time.sleep(0.1)
        if not _group_alive(server):
            break
    server.wait()


def _group_alive(server: subprocess.Popen) -> bool:
    server.poll()  # reap mlflow server itself, so that it does not count as alive
    try:
        os.killpg(server.pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_taken(host: str, port: int) -> str:
    return f"simple_mlflow: cannot listen on {host}:{port}: the port is in use. Choose another one with --port."


def why_it_ended(server: subprocess.Popen, args: argparse.Namespace, was_ready: bool) -> str:
    if server.poll() is None:
        return f"simple_mlflow: mlflow server did not answer within {READY_TIMEOUT:g} s"
    if not was_ready and port_in_use(args.host, args.port):  # taken since our own check
        return port_taken(args.host, args.port)
    return f"simple_mlflow: mlflow server exited with code {server.returncode}; see its messages above"


def main(argv: list[str] | None = None) -> int:
    exit_with_parent()
    args, extra = parse_args(argv)
    if args.port == 0:
        args.port = free_port(args.host)
    if port_in_use(args.host, args.port):
        print(port_taken(args.host, args.port), file=sys.stderr)
        return 1
    store = MlflowStore.in_data_dir(args.data_dir).create()

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = start_server(mlflow_server_command(args, store, extra), args.nice)
    try:
        ready = wait_until_ready(server, probe_url(args.host, args.port), stop)
        if ready:
            url = browser_url(args.host, args.port)
            print(f"MLflow tracking server ready on {url} (store: {store.directory})", flush=True)
            while server.poll() is None and not stop.wait(0.5):
                pass
        if stop.is_set():
            print("simple_mlflow: stopping the MLflow server", file=sys.stderr)
            return 0
        print(why_it_ended(server, args, ready), file=sys.stderr)
        return 1
    finally:
        stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
