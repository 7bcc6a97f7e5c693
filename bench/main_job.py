"""The main job as the benchmarks run it: on free ports, its data in a directory of their own.

``bench/soak.py`` and ``bench/fuzz.py`` measure the real ``python -m main``: they start it here,
sample the memory of its processes, stop it, and read what it stored through a fresh services
process on its data directory (the run's own services are gone once main has stopped).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import cogment
import psutil

from apprentice import cog_settings
from apprentice.launcher import PROJECT_ROOT, free_port, start_python

# Which part of the run a process is, from a marker in its command line.
ROLES = {
    "apprentice.services": "services",
    "apprentice.components": "components",
    "-m web": "web",
    "apprentice.metrics_writer": "metrics writer",
}


@dataclass
class MainJob:
    process: subprocess.Popen
    work_dir: Path
    services_port: int
    components_port: int
    web_port: int

    @property
    def services_endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.services_port}"

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "outputs"

    @property
    def console(self) -> str:
        return (self.work_dir / "main.out").read_text(errors="replace")

    def rss_by_role(self) -> dict[str, float]:
        """MiB per process of the run (main and its children), keyed by role."""
        main = psutil.Process(self.process.pid)
        rss = {"main": main.memory_info().rss / 2**20}
        for child in main.children(recursive=True):
            command = " ".join(child.cmdline())
            role = next((role for marker, role in ROLES.items() if marker in command), f"{child.name()} {child.pid}")
            rss[role] = child.memory_info().rss / 2**20
        return rss


@contextlib.contextmanager
def work_directory(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary directory for a run's data and logs; removed afterwards unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"data and logs: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def main_job(work_dir: Path, overrides: list[str]) -> Iterator[MainJob]:
    """``python -m main OVERRIDES`` on free ports; stopped (SIGTERM, then SIGKILL) on exit."""
    job = MainJob(None, work_dir, free_port(), free_port(), free_port())  # type: ignore[arg-type]
    command = [
        sys.executable, "-m", "main", *overrides, f"data_dir={work_dir / 'data'}", f"hydra.run.dir={job.log_dir}",
        f"services.port={job.services_port}", f"services.components_port={job.components_port}",
        f"web.port={job.web_port}", f"mlflow.port={free_port()}",
    ]  # fmt: skip
    with open(work_dir / "main.out", "w") as console:
        job.process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield job
        finally:
            stop(job.process)


def stop(process: subprocess.Popen, timeout: float = 30.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.asynccontextmanager
async def stored_data(work_dir: Path) -> AsyncIterator[cogment.Datastore]:
    """A datastore client on the run's data directory, served by a fresh services process."""
    services = start_python("services", ["-m", "apprentice.services", "--port", "0", "--data-dir", str(work_dir / "data")], work_dir / "reader.log")
    try:
        context = cogment.Context(user_id="bench-reader", cog_settings=cog_settings, prometheus_registry=None)
        yield context.get_datastore(cogment.Endpoint(services.endpoint))
    finally:
        services.stop()
