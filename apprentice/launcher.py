"""Start Apprentice's gRPC servers as child processes and stop them again.

Each server (the Cogment services, the environment and actor components) runs in its own process
so that a 2-core machine runs them side by side. A child prints one line with its
``grpc://HOST:PORT`` (``http://HOST:PORT`` for simple_mlflow) once it listens; that line is how the
parent learns the port, so ``--port 0`` works without races.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TextIO

PROJECT_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)
PARENT_PID_VARIABLE = "APPRENTICE_PARENT_PID"
READY_LINE = re.compile(r"(?:grpc|http)://[^\s:/]+:(\d+)")
STOP_TIMEOUT = 6.0  # s from SIGTERM to SIGKILL when main stops its children
READY_TIMEOUT = 60.0  # s a child may take to print its ready line
WATCH_PERIOD = 0.5  # s between two looks at whether a child has exited


@dataclass
class ChildServer:
    name: str
    process: subprocess.Popen
    port: int

    @property
    def endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not stopped after ``timeout`` s; returns the exit code."""
        stop_all([self], timeout)
        return self.process.returncode


def start_python(name: str, args: list[str], log_path: Path, ready_timeout: float = READY_TIMEOUT) -> ChildServer:
    """``python *args`` (e.g. ``["-m", "apprentice.services", "--port", "0"]``), once it is listening.

    Its stderr, and its stdout after the ready line, are appended to ``log_path``.
    """
    process, log_file = _spawn_python(args, log_path)
    return _when_ready(name, process, log_file, log_path, ready_timeout)


def _spawn_python(args: list[str], log_path: Path) -> tuple[subprocess.Popen, TextIO]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "a")  # noqa: SIM115 - handed to the child and the drain thread
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env={**CHILD_DEFAULTS, **os.environ, "PYTHONUNBUFFERED": "1", PARENT_PID_VARIABLE: str(os.getpid())},
    )
    return process, log_file


# The children act on small batches at every tick (an expert's or a learner's numpy forward pass),
# where OpenBLAS's own threads only fight the gRPC threads for the cores: with them an expert's
# batched act took up to 50x longer here. The user's environment wins.
CHILD_DEFAULTS = {"OPENBLAS_NUM_THREADS": "1"}


def _when_ready(name: str, process: subprocess.Popen, log_file: TextIO, log_path: Path, ready_timeout: float) -> ChildServer:
    """The child once its ready line came; killed if it cannot start or the wait is interrupted (SIGTERM)."""
    try:
        port = _wait_for_ready_line(process, ready_timeout)
    except BaseException as error:
        if process.poll() is None:
            process.kill()
        process.wait()
        log_file.close()
        if isinstance(error, RuntimeError):
            raise RuntimeError(f"{name} did not start: {error}\n--- {log_path} ---\n{_tail(log_path)}") from None
        raise
    # Keep reading the child's stdout so that it can never block on a full pipe.
    threading.Thread(target=shutil.copyfileobj, args=(process.stdout, log_file), daemon=True).start()
    return ChildServer(name, process, port)


def stop_all(children: list[ChildServer | SupervisedServer], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every child at once, then SIGKILL those still running after ``timeout`` s in all.

    One shared deadline rather than one per child: ``main`` must leave no server behind for more
    than a few seconds, however many children ignore SIGTERM.
    """
    processes = [child.process for child in children]
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def exit_with_parent() -> None:
    """Called first by every child server: SIGTERM when the parent that started it dies, even by
    SIGKILL, so that no server is orphaned (and the services still end trials and flush data).

    Done in the child's own main rather than in a ``preexec_fn``: forking a process whose gRPC
    threads are busy and running Python before ``exec`` can abort the child.
    """
    parent = os.environ.pop(PARENT_PID_VARIABLE, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _wait_for_ready_line(process: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"no ready line within {timeout:g} s")
            if not selector.select(remaining):
                continue
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"exited with code {process.wait()}")
            match = READY_LINE.search(line)
            if match:
                return int(match.group(1))


async def wait_until_reachable(endpoint: str, timeout: float, poll_interval: float = 0.2) -> None:
    """Wait until ``grpc://HOST:PORT`` accepts connections: the SDK's clients never retry, so a
    call made before would fail."""
    host, _, port = endpoint.removeprefix("grpc://").rpartition(":")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _reader, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise RuntimeError(f"nothing answers at {endpoint} after {timeout:g} s") from None
            await asyncio.sleep(poll_interval)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return ""


class ChildExited(RuntimeError):
    """A child server that the run needs has stopped for good; the message says which and where its log is."""


async def watch_exit(child: ChildServer, log_path: Path, period: float = WATCH_PERIOD) -> NoReturn:
    """Until cancelled; raises ChildExited once ``child`` has exited (nothing starts it again)."""
    while child.process.poll() is None:
        await asyncio.sleep(period)
    raise ChildExited(f"The {child.name} stopped (exit code {child.process.returncode}): see {log_path}")


class SupervisedServer:
    """A child server started again, on the same port, whenever it dies (a crashed actor service).

    The trial it was serving ends with a reason; the trials after it find the service back. A
    child that cannot start again, or that dies more than ``max_restarts`` times within
    ``window`` seconds (a crash loop), ends the supervision with ChildExited.
    """

    def __init__(self, name: str, args: list[str], log_path: Path, max_restarts: int = 5, window: float = 60.0) -> None:
        self.name, self.args, self.log_path = name, args, log_path
        self.max_restarts, self.window = max_restarts, window
        self.restart_times: deque[float] = deque()
        self.child = start_python(name, args, log_path)

    @property
    def endpoint(self) -> str:
        return self.child.endpoint

    @property
    def process(self) -> subprocess.Popen:
        return self.child.process

    def _restart_args(self) -> list[str]:
        args = list(self.args)
        if "--port" in args:  # keep the port the first start got (it may have asked for 0)
            args[args.index("--port") + 1] = str(self.child.port)
        return args

    async def watch(self, period: float = WATCH_PERIOD) -> NoReturn:
        """Until cancelled: restart the child whenever it has exited; ChildExited when it cannot be."""
        while True:
            await asyncio.sleep(period)
            if self.child.process.poll() is not None:
                await self._restart()

    async def _restart(self) -> None:
        code = self.child.process.returncode
        now = time.monotonic()
        while self.restart_times and now - self.restart_times[0] > self.window:
            self.restart_times.popleft()
        if len(self.restart_times) >= self.max_restarts:
            raise ChildExited(
                f"The {self.name} exited (code {code}) {self.max_restarts + 1} times within {self.window:g} s: "
                f"not starting them again; see {self.log_path}"
            )
        self.restart_times.append(now)
        log.warning("%s exited with code %s; starting it again", self.name, code)
        # Spawned from the event loop's thread, which lives as long as main: PR_SET_PDEATHSIG fires
        # when the *thread* that started a child ends, and a worker thread may end any time.
        process, log_file = _spawn_python(self._restart_args(), self.log_path)
        try:
            self.child = await asyncio.to_thread(_when_ready, self.name, process, log_file, self.log_path, READY_TIMEOUT)
        except RuntimeError as error:
            raise ChildExited(f"The {self.name} exited (code {code}) and could not be started again: {error}") from None
        except asyncio.CancelledError:  # main is stopping: the half-started child goes with it
            process.kill()
            raise


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS's pick), for a server about to start there."""
    family, kind, _protocol, _name, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind) as probe:
        probe.bind(address)
        return probe.getsockname()[1]
