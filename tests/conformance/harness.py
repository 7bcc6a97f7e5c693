"""Helpers for the orchestrator conformance suite.

* ``ComponentsProcess``: a separate process (``conformance.components``) serving the scripted SDK
  environment / actors / datalog on a loopback port, with its records read back live.
* ``Sdk``: a ``cogment.Context`` created in the test's running loop, its ``Controller`` on the
  services endpoint, a background ``watch_trials`` recorder and client actors joining with
  ``join_trial``.
* Parameter builders (``actor``, ``trial_params``) and record queries.

Every wait is bounded; every process and task is stopped by the fixtures in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cogment
import grpc
from cogment.api import orchestrator_pb2_grpc
from google.protobuf import wrappers_pb2

from apprentice.launcher import free_port
from conformance import cog_settings
from conformance.scripted import ListRecorder, make_actor_impl

CONFORMANCE_DIR = Path(__file__).resolve().parent
TESTS_DIR = CONFORMANCE_DIR.parent
PROJECT_ROOT = TESTS_DIR.parent

STATE_ORDER = ["UNKNOWN", "INITIALIZING", "PENDING", "RUNNING", "TERMINATING", "ENDED"]


def address_of(endpoint: str) -> str:
    assert endpoint.startswith("grpc://"), endpoint
    return endpoint[len("grpc://"):]


async def wait_port(port: int, timeout: float, process: subprocess.Popen | None = None,
                    host: str = "127.0.0.1") -> None:
    """Wait until ``host:port`` accepts TCP connections (the SDK never retries)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before listening on {port}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepts connections on {host}:{port} after {timeout} s") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
            return


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
                     details: Callable[[], str] | None = None, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------
# Records


def select(records: Iterable[dict], **filters: Any) -> list[dict]:
    """Records whose fields equal every given filter (e.g. ``role="actor", name="p1"``)."""
    return [entry for entry in records if all(entry.get(key) == value for key, value in filters.items())]


def events(records: Iterable[dict], trial: str, role: str, name: str | None = None) -> list[dict]:
    result = select(records, trial=trial, role=role, kind="event")
    return result if name is None else [entry for entry in result if entry["name"] == name]


def observation_events(records: Iterable[dict], trial: str, name: str) -> list[dict]:
    return [entry for entry in events(records, trial, "actor", name) if "obs" in entry]


def action_set_events(records: Iterable[dict], trial: str) -> list[dict]:
    return [entry for entry in events(records, trial, "env") if "actions" in entry]


def loop_end(records: Iterable[dict], trial: str, role: str, name: str | None = None) -> dict | None:
    found = select(records, trial=trial, role=role, kind="loop_end")
    if name is not None:
        found = [entry for entry in found if entry.get("name") == name]
    return found[-1] if found else None


def summary(records: Sequence[dict], trial: str, limit: int = 12) -> str:
    """A short description of what each component saw, for assertion messages."""
    lines = []
    for role, name in sorted({(entry.get("role"), entry.get("name")) for entry in records
                              if entry.get("trial") == trial}, key=str):
        mine = [entry for entry in records if entry.get("trial") == trial and entry.get("role") == role
                and entry.get("name") == name]
        described = []
        for entry in mine[-limit:]:
            text = entry["kind"]
            if entry["kind"] == "event":
                text = entry["type"]
                if "obs" in entry:
                    text += f" obs{entry['obs']['tick']}"
                if "actions" in entry:
                    text += f" acts{entry['actions'][0]['tick']}"
                if "rewards" in entry:
                    text += " rew"
                if "messages" in entry:
                    text += " msg"
            elif entry["kind"] == "loop_end":
                text += f"(final={entry.get('final')})"
            elif entry["kind"] == "sample":
                text += f"{entry['tick']}:{entry['state']}"
            described.append(text)
        lines.append(f"  {role} {name}: {len(mine)} records; last: {', '.join(described)}")
    return "\n".join(lines) or "  (no records for this trial)"


# --------------------------------------------------------------------------------------------
# Component processes


class ComponentsProcess:
    """``python -m conformance.components`` on a free loopback port."""

    def __init__(self, directory: Path, name: str, serve: Sequence[str] = ("env", "actors", "datalog")) -> None:
        self.name = name
        self.serve = list(serve)
        self.port = free_port()
        self.events_path = directory / f"{name}.events.jsonl"
        self.log_path = directory / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self._records: list[dict] = []
        self._offset = 0
        self._partial = b""

    @property
    def endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.events_path.touch()
        log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed right after Popen (the child keeps it)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(PROJECT_ROOT), env.get("PYTHONPATH", "")])
        env.pop("COGMENT_DIRECTORY_ENDPOINT", None)  # explicit grpc:// endpoints only (notes §8)
        env["CONFORMANCE_PARENT_PID"] = str(os.getpid())  # the child exits if this process dies
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "conformance.components", "--port", str(self.port),
                 "--events", str(self.events_path), "--serve", ",".join(self.serve)],
                cwd=PROJECT_ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        finally:
            log_file.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        try:
            await wait_port(self.port, timeout, self.process)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"components {self.name} not serving: {error}\n{self.log_text()}") from None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies without closing its streams properly (a crash)."""
        if self.is_running():
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def records(self) -> list[dict]:
        """Every record written so far (read incrementally)."""
        try:
            with open(self.events_path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return self._records
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self._records.append(json.loads(line))
        return self._records

    async def wait_for(self, predicate: Callable[[list[dict]], Any], timeout: float, what: str,
                       trial: str | None = None) -> list[dict]:
        """Poll the records until ``predicate(records)`` is truthy; returns the records."""

        def details() -> str:
            text = f"records of {self.name}:\n" + (summary(self.records, trial) if trial else
                                                    f"  {len(self.records)} records")
            if not self.is_running():
                text += f"\ncomponents process exited ({self.process.returncode}); log tail:\n{self.log_text()[-3000:]}"
            return text

        await wait_until(lambda: predicate(self.records), timeout, what, details, interval=0.03)
        return self.records


# --------------------------------------------------------------------------------------------
# Trial parameters


def json_config(config: dict[str, Any] | None) -> wrappers_pb2.StringValue | None:
    return None if config is None else wrappers_pb2.StringValue(value=json.dumps(config))


def actor(name: str, actor_class: str = "player", endpoint: str = "cogment://client",
          config: dict[str, Any] | None = None, implementation: str | None = "scripted",
          default_action: int | None = None, **kwargs: Any) -> cogment.ActorParameters:
    """ActorParameters; extra kwargs: optional, response_timeout, initial_connection_timeout."""
    params = cogment.ActorParameters(cog_settings, actor_class, name=name, endpoint=endpoint, **kwargs)
    if implementation is not None:
        params.implementation = implementation
    if config is not None:
        params.config = json_config(config)
    if default_action is not None:
        params.default_action = wrappers_pb2.Int64Value(value=default_action)
    return params


def trial_params(env_endpoint: str, actors: list[cogment.ActorParameters], env_config: dict | None = None,
                 env_name: str | None = None, max_steps: int | None = None, max_inactivity: int | None = None,
                 datalog_endpoint: str | None = None, nb_buffered_ticks: int | None = None,
                 properties: dict[str, str] | None = None) -> cogment.TrialParameters:
    params = cogment.TrialParameters(cog_settings)
    params.environment_endpoint = env_endpoint
    params.environment_implementation = "scripted"
    if env_name is not None:
        params.environment_name = env_name
    params.environment_config = json_config(env_config or {})
    params.actors = actors
    if max_steps is not None:
        params.max_steps = max_steps
    if max_inactivity is not None:
        params.max_inactivity = max_inactivity
    if datalog_endpoint is not None:
        params.datalog_endpoint = datalog_endpoint
    if nb_buffered_ticks is not None:
        params.nb_buffered_ticks = nb_buffered_ticks
    if properties:
        params.properties = properties
    return params


# --------------------------------------------------------------------------------------------
# The SDK in the test process


class TrialWatcher:
    """Runs ``controller.watch_trials()`` in the background and keeps every entry it yields."""

    def __init__(self, controller, filters: Sequence[cogment.TrialState] = (), full_info: bool = False) -> None:
        self._controller = controller
        self._filters = list(filters)
        self._full_info = full_info
        self.entries: list[tuple[float, str, str]] = []  # (monotonic time, trial id, state name)
        self.infos: list[Any] = []
        self.error: BaseException | None = None
        self.finished = False
        self._task: asyncio.Task | None = None

    def start(self) -> TrialWatcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            async for info in self._controller.watch_trials(self._filters, full_info=self._full_info):
                self.entries.append((time.monotonic(), info.trial_id, info.state.name))
                self.infos.append(info)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - reported by the tests
            self.error = error
        finally:
            self.finished = True

    def states(self, trial_id: str) -> list[str]:
        return [state for _, trial, state in self.entries if trial == trial_id]

    def time_of(self, trial_id: str, state: str) -> float | None:
        for seen, trial, entry_state in self.entries:
            if trial == trial_id and entry_state == state:
                return seen
        return None

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
                pass


class ClientActor:
    """A client actor joining a trial from the test's loop (``Context.join_trial``)."""

    def __init__(self, task: asyncio.Task, recorder: ListRecorder) -> None:
        self.task = task
        self._recorder = recorder

    @property
    def records(self) -> list[dict]:
        return self._recorder.records


class Sdk:
    """A Context, its Controller on the services endpoint, and a background trial watcher."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.recorder = ListRecorder()
        # Created inside the running loop (notes §9.10), no Prometheus registry (§9.9).
        self.context = cogment.Context(user_id="conformance", cog_settings=cog_settings, prometheus_registry=None)
        self.context.register_actor(make_actor_impl(self.recorder), "alt", ["player", "spectator"])
        self.context.register_actor(make_actor_impl(self.recorder), "scripted", ["player", "spectator"])
        self.controller = self.context.get_controller(cogment.Endpoint(endpoint))
        self.watcher = TrialWatcher(self.controller).start()
        self._tasks: list[asyncio.Task] = []
        self._extra_watchers: list[TrialWatcher] = []

    @property
    def records(self) -> list[dict]:
        """Records of the client actors run by this Context."""
        return self.recorder.records

    def watch(self, filters: Sequence[cogment.TrialState] = (), full_info: bool = False) -> TrialWatcher:
        watcher = TrialWatcher(self.controller, filters, full_info).start()
        self._extra_watchers.append(watcher)
        return watcher

    async def watcher_subscribed(self, env_endpoint: str, timeout: float = 10.0) -> None:
        """Until the background watcher receives updates: a probe trial, PENDING on a client that never
        joins, shows up in it (the stream says nothing until a trial changes), then it is ended."""
        probe_id = await self.start_trial(trial_params(env_endpoint, [actor("probe", "player")]), f"probe-{uuid.uuid4()}")
        deadline = time.monotonic() + timeout
        while not self.watcher.states(probe_id):
            assert time.monotonic() < deadline, f"the trial watcher saw nothing within {timeout} s ({self.watcher.error!r})"
            await asyncio.sleep(0.02)
        await asyncio.wait_for(self.controller.terminate_trial([probe_id], hard=True), 5)

    async def start_trial(self, params: cogment.TrialParameters, trial_id: str | None = None,
                          timeout: float = 10.0) -> str:
        return await asyncio.wait_for(
            self.controller.start_trial(trial_id_requested=trial_id, trial_params=params), timeout)

    def join(self, trial_id: str, actor_name: str | None = None, actor_class: str | None = None) -> ClientActor:
        """Start ``join_trial`` in a task; the task ends when the client's session ends (or raises)."""
        task = asyncio.create_task(self.context.join_trial(
            trial_id, cogment.Endpoint(self.endpoint), actor_name=actor_name, actor_class=actor_class))
        self._tasks.append(task)
        return ClientActor(task, self.recorder)

    async def trial_info(self, trial_id: str):
        infos = await asyncio.wait_for(self.controller.get_trial_info([trial_id]), 5)
        return infos[0] if infos else None

    async def wait_state(self, trial_id: str, state: str = "ENDED", timeout: float = 10.0,
                         records: Callable[[], Sequence[dict]] | None = None) -> float:
        """Wait until ``watch_trials`` (or ``get_trial_info``) shows ``state`` (or a later one).

        Returns the monotonic time it was first seen.
        """
        target = STATE_ORDER.index(state)
        deadline = time.monotonic() + timeout
        next_poll = 0.0
        last_info = None
        while True:
            for seen, trial, entry_state in self.watcher.entries:
                if trial == trial_id and STATE_ORDER.index(entry_state) >= target:
                    return seen
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + 0.1
                try:
                    last_info = await self.trial_info(trial_id)
                except Exception as error:  # noqa: BLE001 - shown in the failure message
                    last_info = f"get_trial_info failed: {error!r}"
                if last_info is not None and not isinstance(last_info, str) \
                        and STATE_ORDER.index(last_info.state.name) >= target:
                    return time.monotonic()
            if time.monotonic() > deadline:
                text = (f"trial {trial_id} did not reach {state} within {timeout} s; "
                        f"watch_trials saw {self.watcher.states(trial_id)} (watch error: {self.watcher.error!r}); "
                        f"get_trial_info: {last_info}")
                if records is not None:
                    text += "\n" + summary(records(), trial_id)
                raise AssertionError(text)
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for task in self._tasks:
            if not task.done():
                task.cancel()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, 5)
            except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for watcher in [self.watcher, *self._extra_watchers]:
            await watcher.close()


def lifecycle_stub(endpoint: str) -> tuple[grpc.aio.Channel, orchestrator_pb2_grpc.TrialLifecycleSPStub]:
    channel = grpc.aio.insecure_channel(address_of(endpoint))
    return channel, orchestrator_pb2_grpc.TrialLifecycleSPStub(channel)


def client_actor_stub(endpoint: str) -> tuple[grpc.aio.Channel, orchestrator_pb2_grpc.ClientActorSPStub]:
    channel = grpc.aio.insecure_channel(address_of(endpoint))
    return channel, orchestrator_pb2_grpc.ClientActorSPStub(channel)


def assert_consecutive(ticks: Sequence[int], first: int, last: int, what: str) -> None:
    expected = list(range(first, last + 1))
    assert list(ticks) == expected, (
        f"{what}: expected ticks {first}..{last} in order, got {len(ticks)} ticks: "
        f"{_compact(ticks)}")


def _compact(values: Sequence[int], limit: int = 30) -> str:
    values = list(values)
    if len(values) <= limit:
        return str(values)
    return f"{values[:limit // 2]} ... {values[-limit // 2:]}"
