"""simple_mlflow and MetricsLogger, with real processes: the MLflow server, the writer processes,
SQLite stores in temp dirs; MlflowClient reads back what was logged.

One simple_mlflow server (module scope) serves the tests, started after two loggers have begun.
mlflow is imported inside the tests that need it: its import alone takes ~2 s.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from apprentice import metrics_writer
from apprentice.launcher import PROJECT_ROOT, ChildServer, free_port, start_python
from apprentice.metrics import MetricsLogger, MlflowStore, resolve_tracking_uri

STEPS = 1500  # two metrics a step: three log_batch calls of 1000


def start_simple_mlflow(data_dir: Path, port: int, log_path: Path) -> ChildServer:
    args = ["-m", "simple_mlflow", "--port", str(port), "--data-dir", str(data_dir)]
    return start_python("simple_mlflow", args, log_path, ready_timeout=180)


def stop_and_check(server: ChildServer, sig: signal.Signals) -> None:
    """Stop simple_mlflow with ``sig``; it must exit 0 and leave none of its processes behind."""
    started = psutil.Process(server.process.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(process.cmdline()) for process in started)
    server.process.send_signal(sig)
    assert server.process.wait(timeout=30) == 0
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"left running: {[process.cmdline() for process in alive]}"


def steps_logged(client, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module", autouse=True)
def mlflow_environment() -> Iterator[None]:
    """No MLFLOW_TRACKING_URI from the caller's shell, and no MLflow telemetry from the tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


@dataclass
class LateServer:
    """simple_mlflow, and the two loggers that started before it (see ``server``)."""

    server: ChildServer
    data_dir: Path
    direct: MetricsLogger  # no server answered: it writes straight into the SQLite store
    waiting: MetricsLogger  # told the server's URL: it keeps its metrics until the server is up

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LateServer]:
    """simple_mlflow on a free port, started late on purpose: before it, two loggers log steps
    0-499, one straight into the SQLite store, one waiting for the server. SIGTERM must stop the
    server and its workers. (One server for the whole module: each start costs ~10 s.)"""
    data_dir, port = tmp_path_factory.mktemp("served"), free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the writer's own retries suffice here
        waiting = MetricsLogger(tracking_uri=f"http://127.0.0.1:{port}")
        assert waiting.start_run("late", run_name="waiting", timeout=0) is None
    direct = MetricsLogger(data_dir=data_dir, server_port=port)
    direct.start_run("late", run_name="direct")
    for step in range(500):
        direct.log_metric("loss", 1.0, step)
        waiting.log_metric("loss", 1.0, step)
    assert direct.flush()
    assert not waiting.flush(timeout=10)

    running = start_simple_mlflow(data_dir, port, data_dir / "simple_mlflow.log")
    try:
        yield LateServer(running, data_dir, direct, waiting)
        stop_and_check(running, signal.SIGTERM)
    finally:
        direct.close()
        waiting.close(timeout=1)
        running.stop()


# -- simple_mlflow ---------------------------------------------------------------------------------


def test_server_serves_the_ui_to_a_browser_on_localhost(server: LateServer) -> None:
    import requests

    base = f"http://localhost:{server.port}"
    assert requests.get(f"{base}/", timeout=10).status_code == 200
    # What the UI's scripts do: same-origin API calls, with the Host and Origin of localhost.
    response = requests.get(
        f"{base}/ajax-api/2.0/mlflow/experiments/search",
        params={"max_results": 5},
        headers={"Origin": base},
        timeout=10,
    )
    assert response.status_code == 200
    assert "experiments" in response.json()


def test_a_taken_port_is_one_clear_line(server: LateServer, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simple_mlflow", "--port", str(server.port), "--data-dir", str(tmp_path)],
        cwd=PROJECT_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(server.port) in lines[0] and "--port" in lines[0], result.stderr


def test_ctrl_c_while_starting_stops_everything(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "simple_mlflow", "--port", str(free_port()), "--data-dir", str(tmp_path)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (started := psutil.Process(process.pid).children(recursive=True)):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        _, alive = psutil.wait_procs(started, timeout=10)
        assert not alive, f"left running: {[child.cmdline() for child in alive]}"
    finally:
        process.kill()
        process.wait()


# -- MetricsLogger ---------------------------------------------------------------------------------


def test_metrics_logged_through_the_server_are_all_read_back(server: LateServer, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    logger = MetricsLogger(data_dir=tmp_path, server_port=server.port)
    run_id = logger.start_run("served", run_name="bc", resume=True)  # no such run yet: a new one
    assert run_id and logger.tracking_uri == server.url
    logger.log_params({"lr": 0.001, "hidden": [64, 64]})
    # How long a call takes is measured by bench/simple_bc_learning.py, not asserted here: a
    # loaded machine would fail a timed test.
    for step in range(STEPS):
        logger.log_metric("loss", 1 / (step + 1), step)
        logger.log_metric("accuracy", step / STEPS, step)
    logger.close()

    client = MlflowClient(server.url)
    run = client.get_run(run_id)
    assert (run.info.status, run.info.run_name) == ("FINISHED", "bc")
    assert run.data.params == {"lr": "0.001", "hidden": "[64, 64]"}
    assert steps_logged(client, run_id, "loss") == steps_logged(client, run_id, "accuracy") == list(range(STEPS))
    assert not (tmp_path / "mlflow").exists()  # nothing went to the local store


def test_a_run_is_resumed_by_id_or_by_name(server: LateServer, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(server.url)
    experiment_id = client.create_experiment("resumed")
    run_id = client.create_run(experiment_id, run_name="bc-1").info.run_id
    client.create_run(experiment_id, run_name="bc-2")  # a later run, of another name

    with pytest.raises(ZeroDivisionError), MetricsLogger(data_dir=tmp_path, server_port=server.port) as by_id:
        assert by_id.start_run("resumed", run_id=run_id) == run_id
        for step in range(10):
            by_id.log_metric("loss", 1.0, step)
        raise ZeroDivisionError  # the training crashes
    assert client.get_run(run_id).info.status == "FAILED"
    by_name = MetricsLogger(data_dir=tmp_path, server_port=server.port)
    assert by_name.start_run("resumed", run_name="bc-1", resume=True) == run_id
    for step in range(10, 20):
        by_name.log_metric("loss", 1.0, step)
    by_name.close()

    assert client.get_run(run_id).info.status == "FINISHED"
    assert steps_logged(client, run_id, "loss") == list(range(20))
    with pytest.raises(RuntimeError, match="refused"):
        MetricsLogger(data_dir=tmp_path, server_port=server.port).start_run("resumed", run_id="0" * 32)


def test_mlflow_tracking_uri_wins_over_a_running_server(
    server: LateServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    # The same server under another name: cheaper than a second store, and just as telling.
    elsewhere = f"http://localhost:{server.port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    assert resolve_tracking_uri(tmp_path, server.port) == elsewhere
    logger = MetricsLogger(data_dir=tmp_path, server_port=server.port)
    run_id = logger.start_run("from-env")
    for step in range(5):
        logger.log_metric("loss", 1.0, step)
    logger.close()

    assert logger.tracking_uri == elsewhere
    assert steps_logged(MlflowClient(elsewhere), run_id, "loss") == list(range(5))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(tmp_path, server.port) == server.url
    assert resolve_tracking_uri(tmp_path, free_port()) == MlflowStore.in_data_dir(tmp_path).backend_uri


def test_a_server_started_late_shows_what_was_logged_before(server: LateServer) -> None:
    """While the server writes into the SQLite store, the direct logger keeps writing into the same
    file, and the waiting logger catches up through the server."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(server.url)
    assert server.direct.tracking_uri == MlflowStore.in_data_dir(server.data_dir).backend_uri
    served_run = client.create_run(client.get_experiment_by_name("late").experiment_id, run_name="served").info.run_id
    for first in range(500, 1500, 100):
        for step in range(first, first + 100):
            server.direct.log_metric("loss", 1.0, step)
            server.waiting.log_metric("loss", 1.0, step)
        client.log_batch(served_run, metrics=[Metric("loss", 1.0, 0, step) for step in range(first, first + 100)])
        time.sleep(0.1)
    server.direct.close()
    server.waiting.close()

    for run_id, steps in (
        (server.direct.run_id, range(1500)),
        (server.waiting.run_id, range(1500)),
        (served_run, range(500, 1500)),
    ):
        assert steps_logged(client, run_id, "loss") == list(steps)
    assert (
        client.get_run(server.direct.run_id).info.status
        == client.get_run(server.waiting.run_id).info.status
        == "FINISHED"
    )
    artifacts = MlflowStore.in_data_dir(server.data_dir).artifacts_dir
    assert client.get_experiment_by_name("late").artifact_location == artifacts.as_uri()


# -- the writer's tolerance, with a stand-in for MlflowClient -----------------------------------------


class FlakyClient:
    """Records what is logged; ``log_batch`` fails ``failures`` times, and refuses keys with '('."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.metrics: list = []
        self.ended: str | None = None

    def get_experiment_by_name(self, name):
        return type("Experiment", (), {"experiment_id": "1"})()

    def create_run(self, experiment_id, run_name=None, tags=None):
        return type("Run", (), {"info": type("Info", (), {"run_id": "run-1"})()})()

    def log_batch(self, run_id, metrics=(), params=()):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

        if self.failures:
            self.failures -= 1
            raise MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE)
        if any("(" in metric.key for metric in metrics):
            raise MlflowException("invalid metric name", error_code=INVALID_PARAMETER_VALUE)
        self.metrics.extend(metrics)

    def set_terminated(self, run_id, status):
        self.ended = status


def flaky_writer(client: FlakyClient, max_queued: int = 10_000) -> tuple[metrics_writer.RunWriter, list]:
    spec = {
        "tracking_uri": "stand-in",
        "experiment_name": "e",
        "run_name": None,
        "run_id": None,
        "resume": False,
        "source": "",
        "max_queued": max_queued,
    }
    replies: list = []
    return metrics_writer.RunWriter(client, spec, lambda *reply: replies.append(reply)), replies


def test_writer_keeps_what_mlflow_failed_to_write_and_writes_it_later(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_writer, "MAX_BACKOFF", 0.01)
    client = FlakyClient(failures=3)
    writer, replies = flaky_writer(client)
    writer.add_metrics([("loss", 1.0, step, 1e9) for step in range(2500)])
    writer.finish("FINISHED", timeout=10)
    assert sorted(metric.step for metric in client.metrics) == list(range(2500))
    assert (client.ended, replies[-1]) == ("FINISHED", ("closed", 0))


def test_writer_drops_only_the_keys_mlflow_refuses() -> None:
    client = FlakyClient()
    writer, _ = flaky_writer(client)
    writer.add_metrics([(key, 1.0, step, 1e9) for step in range(3) for key in ("loss", "bad(key)")])
    writer.write_all(deadline=time.monotonic() + 10)
    writer.add_metrics([("bad(key)", 1.0, 3, 1e9), ("loss", 1.0, 3, 1e9)])
    writer.write_all(deadline=time.monotonic() + 10)
    assert [(metric.key, metric.step) for metric in client.metrics] == [("loss", step) for step in range(4)]


def test_writer_keeps_at_most_max_queued_metrics() -> None:
    writer, _ = flaky_writer(FlakyClient(failures=1000), max_queued=10)
    writer.add_metrics([("loss", 1.0, step, 1e9) for step in range(25)])
    assert (len(writer.metrics), writer.dropped) == (10, 15)
    assert [metric[2] for metric in writer.metrics] == list(range(10))
