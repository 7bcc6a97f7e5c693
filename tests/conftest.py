"""Fixtures shared by the whole suite: free ports and the Cogment services as a real process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = PROJECT_ROOT.parent / "shared"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServicesProcess:
    process: subprocess.Popen
    port: int
    data_dir: Path | None

    @property
    def endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code. SIGKILL if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_services_process(data_dir: Path | None, log_path: Path) -> ServicesProcess:
    """``python -m apprentice.services --port 0`` in a subprocess; returns once it is listening."""
    command = [sys.executable, "-m", "apprentice.services", "--port", "0"]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    log_file = open(log_path, "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ready_line = process.stdout.readline()
    match = re.search(r"grpc://[^:]+:(\d+)", ready_line)
    if match is None:
        process.kill()
        process.wait()
        log_file.close()
        raise RuntimeError(f"services did not start: {ready_line!r}\n{log_path.read_text()}")
    return ServicesProcess(process, int(match.group(1)), data_dir)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[ServicesProcess]:
    """The Apprentice Cogment services on a free port, with a SQLite datastore in a temp dir."""
    running = start_services_process(tmp_path / "data", tmp_path / "services.log")
    try:
        yield running
    finally:
        running.stop()
