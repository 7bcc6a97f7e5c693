"""Fuzz benchmark: malformed WebSocket messages and gRPC calls against a run whose teacher plays.

    .venv/bin/python bench/fuzz.py [--websocket-messages 10000] [--grpc-calls 10000]

Runs ``python -m main +experiment=simple_bc/mountain_car`` with the person's page as teacher
(``web.wait_for_teacher=false``, many trials) on free ports. This script holds the teacher's seat
with one well-behaved WebSocket, then, while the trials go on at the page's pace:

1. WebSocket: ``--websocket-messages`` messages of many kinds (random text and bytes, broken and
   wrong-shaped JSON, unknown actions, oversized messages, claim and input floods), from the
   teacher's socket and from observer sockets; plus refused handshakes (foreign Origin, foreign
   Host as in DNS rebinding) and 100 extra connections over the page's cap.
2. gRPC: ``--grpc-calls`` calls cycling over every method of the services' port (orchestrator,
   datastore, datalog, model registry) and of the components' port, each with one of: random
   bytes, an empty message, a truncated message, or a well-formed request asking for something
   absurd (10,000 actors, NaN timeouts, paging handles of 5,000 digits, ...).

It prints the outcomes per kind (WebSocket: sent / closed with code / handshake refused with
HTTP status; gRPC: status codes), the calls that hung (no answer within 5 s), the RSS of every
process before and after, the lines each log gained, and the pace of the teacher's trials during
each phase: ticks/s and the longest gap between two stored samples of one trial (a stall).

This is a benchmark, not a test: it prints numbers and checks nothing. Every process it starts is
stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import logging
import math
import random
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import websockets
from cogment.api import (
    agent_pb2,
    common_pb2,
    datalog_pb2,
    environment_pb2,
    model_registry_pb2,
    orchestrator_pb2,
    trial_datastore_pb2,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from apprentice.launcher import wait_until_reachable  # noqa: E402 - after the project root is importable
from apprentice.run import RUN_ID_PROPERTY  # noqa: E402
from bench.main_job import main_job, stored_data, work_directory  # noqa: E402

RUN_ID = "fuzz"
CALL_TIMEOUT = 5.0  # a call without an answer by then counts as hung
SERVICE_MODULES = (orchestrator_pb2, trial_datastore_pb2, datalog_pb2, model_registry_pb2)
COMPONENT_MODULES = (agent_pb2, environment_pb2)


# --- The run under fuzz ---------------------------------------------------------------------------


def log_lines(log_dir: Path) -> dict[str, int]:
    return {path.name: len(path.read_text(errors="replace").splitlines()) for path in sorted(log_dir.glob("*.log"))}


async def sample_times(datastore) -> list[list[int]]:
    """The timestamps (ns) of the stored samples of each trial of the run."""
    return [
        [sample.timestamp async for sample in datastore.all_samples([info])]
        async for info in datastore.all_trials(bundle_size=100, properties={RUN_ID_PROPERTY: RUN_ID})
    ]


def trial_pace(trials: list[list[int]], since_ns: int, until_ns: int) -> tuple[float, float]:
    """Ticks/s of the trials between two times, and the longest gap (s) between two samples of a trial."""
    ticks, longest_gap = 0, 0.0
    for timestamps in trials:
        inside = [timestamp for timestamp in timestamps if since_ns <= timestamp <= until_ns]
        ticks += len(inside)
        longest_gap = max([longest_gap, *((after - before) / 1e9 for before, after in itertools.pairwise(inside))])
    return ticks / ((until_ns - since_ns) / 1e9), longest_gap


async def trial_running(stats_url: str, timeout: float = 120.0) -> None:
    """Until the page's stats say that a trial is being played."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            stats = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(stats_url, timeout=5)))
            if stats.get("phase") == "running":
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no trial played within {timeout:g} s ({stats_url})")
        await asyncio.sleep(0.2)


# --- 1. WebSocket -----------------------------------------------------------------------------------


def websocket_payloads(rng: random.Random) -> dict[str, object]:
    """One message of each kind (text or bytes)."""
    return {
        "random text": "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 200))),
        "random bytes": rng.randbytes(rng.randrange(1, 200)),
        "broken json": '{"t": "input", "a": ',
        "wrong shape": json.dumps({"t": "input", "a": "left", "p": "yes"}),
        "unknown action": json.dumps({"t": "input", "a": rng.choice([-1, 3, 99, 2**40])}),
        "deep nesting": "[" * 120 + "]" * 120,
        "claim": json.dumps({"t": "claim"}),
        "oversized": "x" * 5000,
    }


async def fuzz_websocket(url: str, messages: int, rng: random.Random, teacher) -> collections.Counter:
    outcomes: collections.Counter = collections.Counter()
    origin = url.replace("ws://", "http://").rsplit("/", 1)[0]
    kinds = list(websocket_payloads(rng))
    observer = None
    for index in range(messages):
        kind = kinds[index % len(kinds)]
        payload = websocket_payloads(rng)[kind]
        from_teacher = kind not in ("oversized", "claim") and index % 3 == 0
        if from_teacher:
            socket = teacher
        else:
            if observer is None:
                observer = await websockets.connect(url, origin=origin, max_size=None)
            socket = observer
        try:
            await socket.send(payload)
            outcomes[f"{kind}: sent"] += 1
            if kind == "oversized":  # the server closes a socket that sends more than it accepts
                await asyncio.wait_for(socket.wait_closed(), CALL_TIMEOUT)
                outcomes[f"{kind}: closed {socket.close_code}"] += 1
                observer = None
        except websockets.ConnectionClosed as closed:
            outcomes[f"{kind}: closed {closed.rcvd.code if closed.rcvd else 'no code'}"] += 1
            observer = None
        except TimeoutError:
            outcomes[f"{kind}: not closed within {CALL_TIMEOUT:g} s"] += 1
    if observer is not None:
        await observer.close()
    return outcomes


async def refused_handshakes(host_port: str) -> collections.Counter:
    """Handshakes a browser on another site, or a DNS-rebinding page, would make."""
    outcomes: collections.Counter = collections.Counter()
    attempts = {
        "foreign origin": {"origin": "http://evil.example"},
        "foreign host and origin (DNS rebinding)": {
            "origin": f"http://evil.example:{host_port.rpartition(':')[2]}",
            "additional_headers": {"Host": f"evil.example:{host_port.rpartition(':')[2]}"},
        },
    }
    for kind, options in attempts.items():
        for _ in range(20):
            try:
                socket = await websockets.connect(f"ws://{host_port}/ws", **options)
                outcomes[f"{kind}: ACCEPTED"] += 1
                await socket.close()
            except websockets.InvalidStatus as refused:
                outcomes[f"{kind}: refused {refused.response.status_code}"] += 1
            except (websockets.InvalidHandshake, OSError) as error:
                outcomes[f"{kind}: failed {type(error).__name__}"] += 1
    return outcomes


async def extra_connections(url: str, count: int) -> collections.Counter:
    """``count`` more tabs at once: those over the page's cap must be refused cleanly."""
    outcomes: collections.Counter = collections.Counter()
    origin = url.replace("ws://", "http://").rsplit("/", 1)[0]
    sockets = []
    for _ in range(count):
        try:
            sockets.append(await websockets.connect(url, origin=origin))
            outcomes["extra connection: accepted"] += 1
        except websockets.InvalidStatus as refused:
            outcomes[f"extra connection: refused {refused.response.status_code}"] += 1
        except (websockets.InvalidHandshake, OSError) as error:
            outcomes[f"extra connection: failed {type(error).__name__}"] += 1
    await asyncio.sleep(5.0)  # the connections stay open a while: the trial's pace is measured meanwhile
    await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
    return outcomes


# --- 2. gRPC ----------------------------------------------------------------------------------------


def absurd_requests() -> dict[str, bytes]:
    """Well-formed requests, keyed by method name, that ask for far too much or for nonsense."""
    many_actors = common_pb2.TrialParams(
        actors=[common_pb2.ActorParams(name=f"a{i}", actor_class="player", endpoint="grpc://127.0.0.1:1") for i in range(10_000)]
    )
    nan_timeouts = common_pb2.TrialParams(
        max_steps=2**32 - 1,
        nb_buffered_ticks=-(2**62),
        actors=[common_pb2.ActorParams(name="p", actor_class="player", initial_connection_timeout=math.nan, response_timeout=-1.0)],
    )
    handle = "9" * 5000
    return {
        "StartTrial": orchestrator_pb2.TrialStartRequest(params=many_actors).SerializeToString(),
        "StartTrial NaN": orchestrator_pb2.TrialStartRequest(params=nan_timeouts).SerializeToString(),
        "RetrieveTrials": trial_datastore_pb2.RetrieveTrialsRequest(trial_handle=handle).SerializeToString(),
        "RetrieveModels": model_registry_pb2.RetrieveModelsRequest(model_handle=handle).SerializeToString(),
        "RetrieveVersionInfos": model_registry_pb2.RetrieveVersionInfosRequest(model_id="x", version_handle=handle).SerializeToString(),
    }


def grpc_methods(modules) -> list[tuple[str, bool, bool, type]]:
    """(path, client streaming, server streaming, request class) of every method of ``modules``."""
    methods = []
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                request_class = getattr(module, method.input_type.name, None) or getattr(common_pb2, method.input_type.name)
                methods.append((f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming, request_class))
    return methods


def grpc_payload(kind: str, method_name: str, request_class: type, rng: random.Random, absurd: dict[str, bytes]) -> bytes:
    if kind == "random bytes":
        return rng.randbytes(rng.randrange(1, 300))
    if kind == "empty":
        return b""
    if kind == "truncated":
        full = absurd.get(method_name) or request_class().SerializeToString() + rng.randbytes(40)
        return full[: max(1, len(full) // 2)] + b"\xff\xff\xff"
    return absurd.get(method_name, b"\x0a\xff\xff\xff\xff\x0f")  # "absurd": a length far beyond the message


async def grpc_call(channel: grpc.aio.Channel, path: str, client_streaming: bool, server_streaming: bool, payload: bytes) -> str:
    """One raw call; its status code name, "hung" for a unary call without an answer within
    CALL_TIMEOUT, "stream open" for a stream with nothing to send within that time (a watch)."""
    try:
        if client_streaming:
            # Written by hand: with a request iterator, a server that refuses the call before reading
            # it races the client's write, which then reports INTERNAL instead of the server's status.
            call = channel.stream_stream(path)(timeout=CALL_TIMEOUT)
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
                await call.write(payload)
                await call.done_writing()
            reply = await call.read()
            if reply is grpc.aio.EOF:
                return (await call.code()).name
            call.cancel()
            return "OK (answered)"
        if server_streaming:
            call = channel.unary_stream(path)(payload, timeout=CALL_TIMEOUT)
            async for _ in call:
                break
            call.cancel()
            code = await call.code()
            return "OK (answered)" if code == grpc.StatusCode.CANCELLED else code.name
        await channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT)
        return "OK"
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "stream open, nothing sent" if client_streaming or server_streaming else "hung"
        if error.code() == grpc.StatusCode.INTERNAL:
            return f"INTERNAL ({error.details()[:60]})"
        return error.code().name


async def fuzz_grpc(
    targets: dict[str, str], calls: int, rng: random.Random, absurd: dict[str, bytes], concurrency: int = 8
) -> collections.Counter:
    outcomes: collections.Counter = collections.Counter()
    plan = []
    for target, modules in (("services", SERVICE_MODULES), ("components", COMPONENT_MODULES)):
        for path, client_streaming, server_streaming, request_class in grpc_methods(modules):
            for kind in ("random bytes", "empty", "truncated", "absurd"):
                plan.append((target, path, client_streaming, server_streaming, request_class, kind))
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 64 * 2**20)]
    channels = {target: grpc.aio.insecure_channel(address, options=options) for target, address in targets.items()}
    queue = asyncio.Queue()
    for index in range(calls):
        queue.put_nowait(plan[index % len(plan)])

    async def worker() -> None:
        while not queue.empty():
            target, path, client_streaming, server_streaming, request_class, kind = queue.get_nowait()
            method_name = path.rpartition("/")[2]
            if kind == "absurd" and method_name == "StartTrial" and rng.random() < 0.5:
                method_name = "StartTrial NaN"
            payload = grpc_payload(kind, method_name, request_class, rng, absurd)
            code = await grpc_call(channels[target], path, client_streaming, server_streaming, payload)
            outcomes[f"{target} {kind}: {code}"] += 1

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        for channel in channels.values():
            await channel.close()
    return outcomes


# --- The whole bench --------------------------------------------------------------------------------


def print_outcomes(title: str, outcomes: collections.Counter) -> None:
    print(f"{title}:")
    for key, count in sorted(outcomes.items()):
        print(f"  {count:7,d}  {key}")


async def fuzz(args: argparse.Namespace, work_dir: Path) -> None:
    overrides = [
        "+experiment=simple_bc/mountain_car", "teacher=human", "run.num_trials=1000", f"run_id={RUN_ID}",
        "web.wait_for_teacher=false", "web.stay_open_after_run=false",
    ]  # fmt: skip
    rng = random.Random(0)
    absurd = absurd_requests()  # built first: a mistake here shows before the run starts
    phases: dict[str, tuple[int, int]] = {}
    with main_job(work_dir, overrides) as job:
        await wait_until_reachable(job.services_endpoint, timeout=120)
        await wait_until_reachable(f"grpc://127.0.0.1:{job.web_port}", timeout=120)  # any TCP server
        host_port = f"127.0.0.1:{job.web_port}"
        url = f"ws://{host_port}/ws"
        teacher = await websockets.connect(url, origin=f"http://{host_port}")  # the first tab takes the seat
        await trial_running(f"http://{host_port}/api/stats")
        await asyncio.sleep(args.baseline_seconds)  # the trials run undisturbed: the reference pace
        phases["baseline"] = (time.time_ns() - int(args.baseline_seconds * 1e9), time.time_ns())
        rss_before, lines_before = job.rss_by_role(), log_lines(job.log_dir)

        start = time.time_ns()
        websocket_outcomes = await fuzz_websocket(url, args.websocket_messages, rng, teacher)
        websocket_outcomes += await refused_handshakes(host_port)
        phases["websocket fuzz"] = (start, time.time_ns())
        start = time.time_ns()
        websocket_outcomes += await extra_connections(url, 100)
        phases["100 extra connections"] = (start, time.time_ns())
        start = time.time_ns()
        targets = {"services": f"127.0.0.1:{job.services_port}", "components": f"127.0.0.1:{job.components_port}"}
        grpc_outcomes = await fuzz_grpc(targets, args.grpc_calls, rng, absurd)
        phases["gRPC fuzz"] = (start, time.time_ns())

        rss_after, lines_after = job.rss_by_role(), log_lines(job.log_dir)
        alive = job.process.poll() is None
        await teacher.close()
    # Main stopped (SIGTERM): its trials ended and every sample is stored.
    async with stored_data(work_dir) as datastore:
        trials = await sample_times(datastore)

    print_outcomes("WebSocket", websocket_outcomes)
    print_outcomes("gRPC", grpc_outcomes)
    print(f"main still running after the fuzz: {alive}; exit code after SIGTERM: {job.process.returncode}")
    print("Teacher's trials (ticks/s, longest gap between two samples of a trial):")
    for phase, (since, until) in phases.items():
        pace, gap = trial_pace(trials, since, until)
        print(f"  {phase:24s} {pace:6.1f} ticks/s   longest gap {gap:5.2f} s   ({(until - since) / 1e9:5.0f} s)")
    print("RSS (MiB) before -> after:")
    for role, before in rss_before.items():
        print(f"  {role:12s} {before:8.1f} -> {rss_after.get(role, float('nan')):8.1f}")
    print("Log lines gained during the fuzz:")
    for name, after in lines_after.items():
        print(f"  {name:16s} {after - lines_before.get(name, 0):7,d}")
    if not alive:
        print("main's last lines:\n" + "\n".join(job.console.splitlines()[-15:]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--websocket-messages", type=int, default=10_000)
    parser.add_argument("--grpc-calls", type=int, default=10_000)
    parser.add_argument("--baseline-seconds", type=float, default=10.0, help="undisturbed trials before the fuzz")
    parser.add_argument("--keep", action="store_true", help="keep the run's data and logs (the path is printed)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.ERROR)
    with work_directory("apprentice-fuzz-", args.keep) as work_dir:
        asyncio.run(fuzz(args, work_dir))


if __name__ == "__main__":
    main()
