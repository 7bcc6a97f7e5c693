"""The process behind ``MetricsLogger``: it owns the MlflowClient and writes one run in batches.

``MetricsLogger.start_run`` starts ``python -m apprentice.metrics_writer COMMAND_FD REPLY_FD``;
nobody else should. It is a process of its own so that MLflow's Python work never takes the
training process's GIL (see ``apprentice.metrics``).

Commands, in order on COMMAND_FD: a spec dict (where to write, which run), then any of
``("metrics", [(key, value, step, unix_time), ...])``, ``("params", {key: value})``,
``("flush", id)`` and ``("close", status, timeout)``. Replies on REPLY_FD: ``("run", run_id)``,
``("error", message)`` when MLflow refuses the run (the writer then exits), ``("flushed", id,
unwritten)`` and ``("closed", unwritten)``.

What MLflow fails to write (server down, database locked) is kept and retried with backoff; what it
refuses (a 4xx: an invalid key, a param changed) is dropped with a warning, key by key. When the
commands end without "close" (the training process died), the run ends as KILLED.
"""

from __future__ import annotations

import getpass
import itertools
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("apprentice.metrics_writer")

MAX_METRICS_PER_BATCH = 1000  # MLflow's limits for one log_batch
MAX_PARAMS_PER_BATCH = 100
MAX_BACKOFF = 30.0  # s between retries, at most
KILLED_TIMEOUT = 10.0  # s to write what is left when the training process is gone
NICENESS = 10  # the writer runs at a lower priority than training


def is_permanent(error: Exception) -> bool:
    """True when MLflow refused the request itself (a 4xx other than 429): retrying cannot help."""
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException):
        return False
    status = error.get_http_status_code()
    return 400 <= status < 500 and status != 429


class RunRefused(Exception):
    """MLflow refused to create or resume the run (e.g. an unknown run id): the writer gives up."""


def _short(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name, e.g. in some containers
        return "unknown"


class RunWriter:
    """Pending metrics and params of one run, and the MLflow calls that write them."""

    def __init__(self, client: Any, spec: dict[str, Any], reply: Callable[..., None]) -> None:
        self.client = client  # an MlflowClient, or a stand-in in tests
        self.spec = spec
        self.reply = reply
        self.run_id: str | None = None
        self.metrics: deque[tuple[str, float, int, float]] = deque()
        self.params: dict[str, str] = {}
        self.rejected_keys: set[str] = set()
        self.dropped = 0
        self.failures = 0  # consecutive failed writes
        self.retry_at = 0.0  # time.monotonic() before which no write is tried, after a failure

    # -- the command loop --------------------------------------------------------------------

    def serve(self, commands: Connection) -> None:
        """Handle commands as they come; in between, write one batch at a time."""
        while True:
            wait = None  # nothing to write: sleep until a command comes
            if self.unwritten():
                wait = max(0.0, self.retry_at - time.monotonic())
            try:
                command = commands.recv() if commands.poll(wait) else None
            except EOFError:
                self.finish("KILLED", KILLED_TIMEOUT)
                return
            if command is None:
                self.write_one()
            elif not self.handle(command):
                return

    def handle(self, command: tuple) -> bool:
        """Act on one command; False once the run is closed."""
        kind = command[0]
        if kind == "metrics":
            self.add_metrics(command[1])
        elif kind == "params":
            self.params.update(command[1])
        elif kind == "flush":
            self.write_all(deadline=time.monotonic())
            self.reply("flushed", command[1], self.unwritten())
        elif kind == "close":
            self.finish(command[1], command[2])
            return False
        return True

    def add_metrics(self, metrics: list[tuple[str, float, int, float]]) -> None:
        """Queue metrics to write, up to ``max_queued``: newer ones are dropped beyond that."""
        room = self.spec["max_queued"] - len(self.metrics)
        accepted = [metric for metric in metrics if metric[0] not in self.rejected_keys]
        if len(accepted) > room:
            if not self.dropped:
                log.warning(
                    "%d metrics wait for MLflow already: newer ones are dropped until it catches up", len(self.metrics)
                )
            self.dropped += len(accepted) - room
            accepted = accepted[:room]
        self.metrics.extend(accepted)

    def unwritten(self) -> int:
        return len(self.metrics) + len(self.params) + (self.run_id is None)

    # -- writing -----------------------------------------------------------------------------

    def write_one(self) -> bool:
        """Create the run if needed, else write params or one batch of metrics. False on failure."""
        try:
            if self.run_id is None:
                self.start_run()
            elif self.params:
                self.write_params()
            elif self.metrics:
                self.write_metrics()
        except Exception as error:  # any failure is retried: never lose the pending data
            if self.run_id is None and is_permanent(error):
                raise RunRefused(_short(error)) from error
            self.failures += 1
            backoff = min(MAX_BACKOFF, 2.0 ** (self.failures - 1))
            self.retry_at = time.monotonic() + backoff
            log.warning(
                "MLflow write failed (%s); %d metrics kept, retry in %g s", _short(error), len(self.metrics), backoff
            )
            return False
        if self.failures:
            log.info("MLflow writes work again")
        self.failures, self.retry_at = 0, 0.0
        return True

    def write_all(self, deadline: float) -> None:
        """Write until nothing is pending; after a failure, retry with backoff until ``deadline``."""
        while self.unwritten():
            if not self.write_one():
                if self.retry_at > deadline:
                    return
                time.sleep(max(0.0, self.retry_at - time.monotonic()))

    def finish(self, status: str, timeout: float) -> None:
        """Write what is pending (retrying for up to ``timeout`` s), end the run, reply "closed"."""
        self.write_all(deadline=time.monotonic() + timeout)
        unwritten = len(self.metrics) + len(self.params)
        if self.run_id is not None:
            try:
                self.client.set_terminated(self.run_id, status)
            except Exception as error:  # noqa: BLE001 - the run stays RUNNING in MLflow; say so
                log.warning("Could not end MLflow run %s as %s: %s", self.run_id, status, _short(error))
        if unwritten or self.dropped:
            log.warning(
                "MLflow run %s: %d metrics/params not written, %d dropped", self.run_id, unwritten, self.dropped
            )
        self.reply("closed", unwritten)

    def start_run(self) -> None:
        spec = self.spec
        run_id = spec["run_id"] or (self.find_run() if spec["resume"] and spec["run_name"] else None)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")  # also checks that the run exists
        else:
            tags = {"mlflow.user": _user(), "mlflow.source.type": "LOCAL"}
            if spec["source"]:
                tags["mlflow.source.name"] = spec["source"]  # the training script, as MLflow's own runs do
            run = self.client.create_run(self.experiment_id(), run_name=spec["run_name"], tags=tags)
            run_id = run.info.run_id
        self.run_id = run_id
        log.info("MLflow run %s in %s", run_id, spec["tracking_uri"])
        self.reply("run", run_id)

    def experiment_id(self) -> str:
        """The experiment's id; it is created if needed (and if another process just did, that one is used)."""
        name = self.spec["experiment_name"]
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self.spec["artifact_location"])
        except Exception:
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def find_run(self) -> str | None:
        """The latest run named ``run_name`` in the experiment, to resume it."""
        experiment = self.client.get_experiment_by_name(self.spec["experiment_name"])
        if experiment is None:
            return None
        name = self.spec["run_name"]
        quoted = f'"{name}"' if "'" in name else f"'{name}'"
        runs = self.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"attributes.run_name = {quoted}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def write_params(self) -> None:
        from mlflow.entities import Param

        batch = dict(itertools.islice(self.params.items(), MAX_PARAMS_PER_BATCH))
        try:
            self.client.log_batch(self.run_id, params=[Param(key, value) for key, value in batch.items()])
        except Exception as error:
            if not is_permanent(error):
                raise
            # Usually a param logged before with another value: write the others one by one.
            for key, value in batch.items():
                try:
                    self.client.log_batch(self.run_id, params=[Param(key, value)])
                except Exception as single_error:
                    if not is_permanent(single_error):
                        raise
                    log.warning("MLflow refused param %r = %r: %s", key, value, _short(single_error))
        for key in batch:
            del self.params[key]

    def write_metrics(self) -> None:
        batch = list(itertools.islice(self.metrics, MAX_METRICS_PER_BATCH))
        self.log_metrics(batch)
        for _ in batch:
            self.metrics.popleft()

    def log_metrics(self, batch: list[tuple[str, float, int, float]]) -> None:
        """One log_batch; if MLflow refuses it, retry key by key and drop the keys it refuses.

        A retry after a failure may send metrics again; MLflow ignores exact duplicates.
        """
        from mlflow.entities import Metric

        try:
            metrics = [Metric(key, value, int(unix_time * 1000), int(step)) for key, value, step, unix_time in batch]
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as error:
            if not is_permanent(error):
                raise
            keys = list(dict.fromkeys(metric[0] for metric in batch))
            if len(keys) == 1:
                self.rejected_keys.add(keys[0])
                log.warning("MLflow refused metric %r, which is no longer logged: %s", keys[0], _short(error))
                return
            for key in keys:
                self.log_metrics([metric for metric in batch if metric[0] == key])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Ctrl-C reaches the whole process group: the training process handles it and closes the run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = Connection(int(argv[0]), writable=False)
    replies = Connection(int(argv[1]), readable=False)

    def reply(*message: Any) -> None:
        try:
            replies.send(message)
        except OSError:  # the training process is gone; its run still ends properly
            pass

    spec = commands.recv()
    from mlflow import MlflowClient  # at full priority: start_run waits for this import

    # MLflow takes 0.1-0.2 ms of CPU a metric. On a busy machine that CPU should go to training:
    # the writer catches up when there is some to spare (its queue holds up to max_queued).
    os.nice(NICENESS)
    writer = RunWriter(MlflowClient(spec["tracking_uri"]), spec, reply)
    try:
        writer.serve(commands)
    except RunRefused as error:
        reply("error", str(error))
        raise SystemExit(f"MLflow refused the run: {error}") from None
    # All is written and the run ended. Tearing down mlflow's modules would take the interpreter
    # another ~0.7 s, which MetricsLogger.close() would wait for.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
