"""Fixtures shared by the whole suite: the Cogment services as a real process."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apprentice.launcher import PROJECT_ROOT, ChildServer, start_python

SHARED_DIR = PROJECT_ROOT.parent / "shared"


@dataclass
class ServicesProcess(ChildServer):
    data_dir: Path | None = None


def start_services_process(data_dir: Path | None, log_path: Path) -> ServicesProcess:
    """``python -m apprentice.services --port 0`` in a subprocess; returns once it is listening."""
    args = ["--port", "0"] + (["--data-dir", str(data_dir)] if data_dir is not None else [])
    child = start_python("Cogment services", ["-m", "apprentice.services", *args], log_path)
    return ServicesProcess(child.name, child.process, child.port, data_dir)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[ServicesProcess]:
    """The Apprentice Cogment services on a free port, with a SQLite datastore in a temp dir."""
    running = start_services_process(tmp_path / "data", tmp_path / "services.log")
    try:
        yield running
    finally:
        running.stop()
