"""Fixtures of the orchestrator conformance suite (the ``services`` fixture is in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from conformance.harness import ComponentsProcess, Sdk


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


class ComponentsFactory:
    """Starts component processes for one test; all of them are stopped at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[ComponentsProcess] = []

    async def __call__(self, name: str = "components",
                       serve: tuple[str, ...] = ("env", "actors", "datalog")) -> ComponentsProcess:
        process = ComponentsProcess(self.directory, name, serve)
        self.started.append(process)
        process.start()
        await process.wait_ready()
        return process

    def stop_all(self) -> None:
        for process in self.started:
            try:
                process.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                if process.process is not None:
                    process.process.kill()


@pytest.fixture
def components(tmp_path: Path, request) -> Iterator[ComponentsFactory]:
    """``await components(name, serve=(...))`` starts a ``conformance.components`` process."""
    factory = ComponentsFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()
        if _failed(request):
            for process in factory.started:
                print(f"----- components {process.name} (port {process.port}) log tail -----")
                print(process.log_text()[-4000:])


@pytest.fixture
def services_log(tmp_path: Path, request):
    """A function returning the services process log so far (written by ``tests/conftest.py``)."""
    path = tmp_path / "services.log"

    def read() -> str:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    yield read
    if _failed(request):
        print("----- services log tail -----")
        print(read()[-6000:])


@pytest_asyncio.fixture
async def sdk(services, services_log) -> AsyncIterator[Sdk]:
    """A Context (in the test's loop) with a Controller on the services endpoint and a trial watcher."""
    client = Sdk(services.endpoint)
    try:
        yield client
    finally:
        await client.close()
