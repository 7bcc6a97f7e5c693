"""Trial throughput benchmark: how many ticks per second Apprentice's Cogment stack runs.

    .venv/bin/python bench/trial_throughput.py [--duration 10] [--ticks 200] [--parallel 4]

Measured in one run, on this machine:

1. echo: round trips/s of a plain grpc.aio bidirectional stream between two processes (strict
   ping-pong, ~100-byte messages). It is the practical ceiling of Python gRPC here.
2. raw gym: MountainCar steps/s with the same policy and teacher calls, no Cogment
   (``EnsemblePolicy.act_one`` of an untrained ``SimpleBCModel`` for the player, ``teacher_decision``
   for the scripted teacher). Before it, the seconds a plain 10M-iteration Python loop takes: the
   VM is shared and its speed varies over time; this says which state a run caught.
3. Cogment, one trial at a time, then ``--parallel`` trials at once: the real thing through the SDK.
   ``python -m apprentice.services`` (orchestrator + datastore + model registry, datalog on) and
   ``python -m apprentice.components`` (``GymEnvironment``, ``SimpleBCActor`` playing an untrained
   ``SimpleBCModel`` published in the registry, ``ScriptedTeacher``) run as subprocesses; this
   process is the controller. No rendering. Then one trial at a time again with do-nothing
   components (``bench/null_components.py``): the same messages, no application work, trials as
   long as the real ones were on average, so the runtime's own ceiling (the SDK and Apprentice's
   services).

Targets (the project's): one trial >= (echo round trips/s / 3) / 3 ticks/s, i.e. a tick may cost
about three round trips (action set -> env observations, observations -> actor actions, plus the
rewards and datalog traffic) with a 3x allowance for Python work; ``--parallel`` trials >= 1.6x one
trial. The CPU ms/tick printed per process (and, in brackets, the part of it on the process's main
thread, where Python and the asyncio loop run) shows where the time goes.

``--py-spy DIR`` also samples the services and components processes with py-spy (which must be
installed, e.g. ``.venv/bin/pip install py-spy``) during each Cogment measurement, writing
collapsed stacks (``DIR/<phase>-<process>.txt``) and a summary of the hottest frames. Sampling
slows the processes down somewhat: take the throughput figures from a run without it.

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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cogment
import grpc
import gymnasium
import psutil
import torch
from cogment.control import Controller

from actors.scripted_teacher import teacher_decision
from actors.simple_bc import SimpleBCModel
from apprentice import cog_settings
from apprentice.launcher import ChildServer, start_python
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig, EnvironmentSpecs
from apprentice.spaces import environment_specs

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "MountainCar-v0"
MODEL_ID = "bench-untrained"
HIDDEN_SIZES = [64, 64]
ENVIRONMENT = "gym=environments.gym_environment.GymEnvironment"
PLAYER = "simple_bc=actors.simple_bc.SimpleBCActor"
TEACHER = "scripted_teacher=actors.scripted_teacher.ScriptedTeacher"
NULL_ENVIRONMENT = "null=bench.null_components.NullEnvironment"
NULL_ACTOR = "null=bench.null_components.NullActor"
ECHO_METHOD = "/bench.Echo/PingPong"
ECHO_PAYLOAD = b"x" * 100

log = logging.getLogger("bench")


# --- Child processes ---------------------------------------------------------------------------


def start_child(name: str, args: list[str], log_dir: Path, exit_stack: contextlib.ExitStack) -> ChildServer:
    """``python *args`` once it listens, stopped when ``exit_stack`` closes."""
    child = start_python(name, args, log_dir / f"{name}.log")
    exit_stack.callback(child.stop)
    return child


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU time so far: all threads (gRPC does much of its work off the main one), and
    the main thread alone (Python code and the asyncio loop)."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    main = next((t.user_time + t.system_time for t in process.threads() if t.id == pid), 0.0)
    return times.user + times.system, main


# --- 1. Echo: the ceiling of Python gRPC --------------------------------------------------------


async def serve_echo() -> None:
    """The echo server (run in a child process): answers each message with the same bytes."""

    async def ping_pong(requests, _context):
        async for message in requests:
            yield message

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(ping_pong)  # no (de)serializers: raw bytes
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"PingPong": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"Echo server ready on grpc://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=None)


@dataclass
class EchoResult:
    round_trips_per_second: float
    server_cpu_ms: float  # per round trip: one message read and one written, server side
    client_cpu_ms: float  # per round trip, this process


async def measure_echo(echo: ChildServer, seconds: float) -> EchoResult:
    """Strict ping-pong on one stream for ``seconds``: round trips/s and CPU per round trip."""
    # A local subchannel pool closes the connection with the channel (no GOAWAY log when the server stops).
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{echo.port}", options=options) as channel:
        call = channel.stream_stream(ECHO_METHOD)()
        for _ in range(200):  # warm-up: connection, HTTP/2 windows
            await call.write(ECHO_PAYLOAD)
            await call.read()
        round_trips = 0
        cpu_before = cpu_seconds(echo.process.pid)[0], cpu_seconds(psutil.Process().pid)[0]
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            await call.write(ECHO_PAYLOAD)
            await call.read()
            round_trips += 1
        elapsed = time.perf_counter() - start
        cpu_after = cpu_seconds(echo.process.pid)[0], cpu_seconds(psutil.Process().pid)[0]
        await call.done_writing()
        call.cancel()
    server_ms, client_ms = ((after - before) * 1000 / round_trips for after, before in zip(cpu_after, cpu_before))
    return EchoResult(round_trips / elapsed, server_ms, client_ms)


# --- 2. Raw gymnasium loop ----------------------------------------------------------------------


def measure_python_loop(iterations: int = 10_000_000) -> float:
    """Seconds for a plain Python loop: how fast this (shared, throttled at times) VM runs right now."""
    start = time.perf_counter()
    total = 0
    for i in range(iterations):
        total += i
    return time.perf_counter() - start


def measure_raw_gym(seconds: float, ticks: int) -> float:
    """MountainCar with the same calls the actors make per step (player + teacher), no Cogment."""
    env = gymnasium.make(ENV_ID, max_episode_steps=ticks)
    torch.manual_seed(0)
    policy = SimpleBCModel(MODEL_ID, environment_specs(ENV_ID), HIDDEN_SIZES).policy()  # untrained, as in the trials
    observation, _ = env.reset(seed=0)
    last_player_action = None
    steps = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        player_action = policy.act_one(observation)
        teacher_action = teacher_decision(observation, last_player_action)
        action = player_action if teacher_action is None else teacher_action
        observation, _reward, terminated, truncated, _ = env.step(action)
        last_player_action = player_action
        steps += 1
        if terminated or truncated:
            observation, _ = env.reset()
            last_player_action = None
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


# --- 3. Cogment trials --------------------------------------------------------------------------


class TrialEnds:
    """Waits for trials to end: pushed by WatchTrials, with a GetTrialInfo poll as a safety net.

    The poll covers a watch stream that is not connected yet when a short trial ends, or an
    orchestrator that does not send full info.
    """

    def __init__(self, controller: Controller):
        self.controller = controller
        self.ended: dict[str, asyncio.Future] = {}
        self.task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        ended_trials = self.controller.watch_trials(trial_state_filters=[cogment.TrialState.ENDED], full_info=True)
        async for info in ended_trials:
            future = self.ended.get(info.trial_id)
            if future is not None and not future.done():
                future.set_result(info.tick_id)

    def expect(self, trial_id: str) -> None:
        """Call before starting the trial, so that its end cannot be missed."""
        self.ended[trial_id] = asyncio.get_running_loop().create_future()

    async def wait(self, trial_id: str, timeout: float = 120.0) -> int:
        """The trial's last tick id once it has ended (the GetTrialInfo poll runs every second)."""
        deadline = time.monotonic() + timeout
        future = self.ended[trial_id]
        while time.monotonic() < deadline:
            try:
                return await asyncio.wait_for(asyncio.shield(future), 1.0)
            except TimeoutError:
                infos = await self.controller.get_trial_info([trial_id])
                if infos and infos[0].state == cogment.TrialState.ENDED:
                    return infos[0].tick_id
        raise TimeoutError(f"trial {trial_id} did not end within {timeout} s")

    def close(self) -> None:
        self.task.cancel()


def trial_parameters(
    services: ChildServer, components: ChildServer, specs: EnvironmentSpecs, ticks: int, seed: int
) -> cogment.TrialParameters:
    """One MountainCar trial: SimpleBC player + scripted teacher, datalog to the services, no rendering.

    The player follows the latest iteration of ``MODEL_ID`` (``model_iteration=-1``), as in the
    main job's trials.
    """
    config = ActorConfig(environment_specs=specs, seed=seed, model_id=MODEL_ID, model_iteration=-1)
    actors = [
        cogment.ActorParameters(
            cog_settings,
            name="player",
            class_name=cog_settings.PLAYER_ACTOR_CLASS,
            endpoint=components.endpoint,
            implementation=PLAYER.partition("=")[0],
            config=config,
        ),
        cogment.ActorParameters(
            cog_settings,
            name="teacher",
            class_name=cog_settings.TEACHER_ACTOR_CLASS,
            endpoint=components.endpoint,
            implementation=TEACHER.partition("=")[0],
            config=config,
        ),
    ]
    return cogment.TrialParameters(
        cog_settings,
        environment_endpoint=components.endpoint,
        environment_implementation=ENVIRONMENT.partition("=")[0],
        environment_config=EnvironmentConfig(
            env_id=ENV_ID, seed=seed, render=False, make_kwargs_json=json.dumps({"max_episode_steps": ticks})
        ),
        datalog_endpoint=services.endpoint,
        actors=actors,
    )


def null_trial_parameters(services: ChildServer, null_components: ChildServer, ticks: int) -> cogment.TrialParameters:
    """The same trial shape with do-nothing components (``bench/null_components.py``), ``ticks`` long."""
    actors = [
        cogment.ActorParameters(
            cog_settings, name=name, class_name=name, endpoint=null_components.endpoint, implementation="null"
        )
        for name in (cog_settings.PLAYER_ACTOR_CLASS, cog_settings.TEACHER_ACTOR_CLASS)
    ]
    return cogment.TrialParameters(
        cog_settings,
        environment_endpoint=null_components.endpoint,
        environment_implementation="null",
        datalog_endpoint=services.endpoint,
        max_steps=ticks,
        actors=actors,
    )


@dataclass
class CogmentResult:
    ticks_per_second: float
    trials: int
    ticks: int
    cpu_ms_per_tick: dict[str, tuple[float, float]]  # process: (all threads, main thread)
    cores_used: float  # CPU seconds per second of the measured processes
    machine_cores_busy: float  # the same for the whole machine (other processes and the kernel included)
    steal_cores: float  # CPU seconds per second the hypervisor gave to other VMs


class Profiler:
    """``py-spy record`` on each measured child process for the length of one measurement."""

    def __init__(self, out_dir: Path, rate: int) -> None:
        executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(executable).exists():
            raise SystemExit("--py-spy needs py-spy: .venv/bin/pip install py-spy")
        self.executable = executable
        self.out_dir = out_dir
        self.rate = rate
        out_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def recording(self, phase: str, children: list[ChildServer]):
        records = []
        for child in children:
            output = self.out_dir / f"{phase}-{child.name}.txt"
            # Raw collapsed stacks, one root per thread (--threads). Idle threads (blocked in epoll
            # and the like) are left out, so the samples are where the CPU goes. No --native: its
            # stack unwinding pauses the processes several times longer, its Cython frames are
            # anonymous addresses in grpcio's stripped build, and it counts waits as work.
            command = [self.executable, "record", "--pid", str(child.process.pid), "--format", "raw",
                       "--output", str(output), "--rate", str(self.rate), "--threads", "--nolineno"]  # fmt: skip
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            records.append((child.name, output, process))
        try:
            yield
        finally:
            for name, output, process in records:
                process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
                try:
                    _stdout, stderr = process.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    _stdout, stderr = process.communicate()
                if not output.exists():
                    print(f"py-spy {phase}/{name} wrote nothing: {stderr.strip()[-500:]}")
                    continue
                summary = summarize_profile(output)
                (self.out_dir / f"{phase}-{name}-summary.txt").write_text(summary)
                print(f"--- py-spy, {phase}, {name} ({output}) ---\n{summary}")


# Where a sampled frame belongs, by the file py-spy shows for it (first match wins). Without
# --native, time in C code (Cython gRPC, syscalls, protobuf's upb, torch kernels) goes to the
# innermost Python frame that called it.
FRAME_CATEGORIES = [
    ("grpc", ("grpc/",)),
    ("protobuf", ("protobuf/",)),
    ("cogment SDK", ("cogment/",)),
    ("asyncio", ("asyncio/", "selectors.py")),
    ("torch", ("torch/",)),
    ("gymnasium / numpy", ("gymnasium/", "numpy/")),
    ("apprentice services", ("apprentice/services/",)),
    ("apprentice app", ("apprentice/", "environments/", "actors/")),
]
OTHER = "other"
# py-spy (without --native) counts the asyncio loop's epoll wait as work; per psutil it is not.
IDLE_SELECT = "EpollSelector.select (selectors.py)"
# Frames worth listing by inclusive time: those of the code under test, not the event loop's.
LISTED_CATEGORIES = {"grpc", "cogment SDK", "apprentice services", "apprentice app", "protobuf"}


def frame_category(frame: str) -> str:
    for category, markers in FRAME_CATEGORIES:
        if any(marker in frame for marker in markers):
            return category
    return OTHER


def summarize_profile(path: Path, top: int = 15) -> str:
    """Samples per thread; for the main thread, self time by category and the top functions.

    Self time goes to the innermost (Python) frame of each sample; inclusive time counts a sample
    once for every distinct function of the code under test on its stack.
    """
    threads: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = main = idle_select = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        total += count
        threads[thread] += count
        if "MainThread" not in thread or not frames:
            continue
        if frames[-1] == IDLE_SELECT:
            idle_select += count
            continue
        main += count
        self_time[frame_category(frames[-1])] += count
        leaves[frames[-1]] += count
        for function in {frame for frame in frames if frame_category(frame) in LISTED_CATEGORIES}:
            inclusive[function] += count
    if not total:
        return "no samples (the process was idle)\n"
    lines = [f"{total} samples, by thread:"]
    lines += [f"  {count / total:6.1%}  {thread}" for thread, count in threads.most_common()]
    if idle_select:
        lines.append(f"main thread: {idle_select} samples in the event loop's select() left out (waiting, not working)")
    if main:
        lines.append(f"main thread ({main} samples), self time by category:")
        lines += [f"  {count / main:6.1%}  {category}" for category, count in self_time.most_common()]
        lines.append("main thread, self time, top functions:")
        lines += [f"  {count / main:6.1%}  {function[:150]}" for function, count in leaves.most_common(top)]
        lines.append("main thread, inclusive time, top functions (grpc, protobuf, SDK, apprentice):")
        lines += [f"  {count / main:6.1%}  {function[:150]}" for function, count in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


async def run_trials(
    controller: Controller,
    ends: TrialEnds,
    make_params: Callable[[int], cogment.TrialParameters],
    processes: dict[str, int],
    seconds: float,
    workers: int,
) -> CogmentResult:
    """``workers`` loops, each starting trials back to back until ``seconds`` have passed.

    Ticks are counted from each trial's last tick id; the rate is over the wall time until the last
    trial ended. ``processes`` (name: pid) are those whose CPU time is measured.
    """
    totals = {"trials": 0, "ticks": 0}
    seeds = itertools.count()

    async def worker() -> None:
        while True:  # at least one trial, so that seconds=0 runs exactly one per worker
            trial_id = f"bench-{uuid.uuid4()}"
            ends.expect(trial_id)
            await controller.start_trial(trial_id_requested=trial_id, trial_params=make_params(next(seeds)))
            ticks = await ends.wait(trial_id)  # not `totals[...] += await ...`: other workers run meanwhile
            totals["trials"] += 1
            totals["ticks"] += ticks
            if time.perf_counter() >= deadline:
                return

    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    machine_before = machine_seconds()
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - start
    machine_busy, steal = ((after - before) / elapsed for after, before in zip(machine_seconds(), machine_before))
    ticks = max(totals["ticks"], 1)
    cpu, used = {}, 0.0
    for name, pid in processes.items():
        (all_after, main_after), (all_before, main_before) = cpu_seconds(pid), cpu_before[name]
        cpu[name] = ((all_after - all_before) * 1000 / ticks, (main_after - main_before) * 1000 / ticks)
        used += all_after - all_before
    return CogmentResult(totals["ticks"] / elapsed, totals["trials"], totals["ticks"], cpu, used / elapsed, machine_busy, steal)


def machine_seconds() -> tuple[float, float]:
    """CPU seconds, all cores: the machine's work (every process and the kernel), and the time the
    hypervisor gave to others while this VM wanted to run (steal)."""
    times = psutil.cpu_times()._asdict()
    not_work = ("idle", "iowait", "steal", "guest", "guest_nice")  # guest time is already in user and nice
    return sum(value for field, value in times.items() if field not in not_work), times.get("steal", 0.0)


async def measure_cogment(
    args: argparse.Namespace,
    services: ChildServer,
    components: ChildServer,
    null_components: ChildServer,
    profiler: Profiler | None,
) -> tuple[CogmentResult, CogmentResult, CogmentResult]:
    """Publish the untrained model, then measure one trial, ``--parallel`` trials, and one trial of
    do-nothing components."""
    specs = environment_specs(ENV_ID)
    context = cogment.Context(user_id="bench", cog_settings=cog_settings, prometheus_registry=None)
    controller = context.get_controller(cogment.Endpoint(services.endpoint))
    await controller.get_remote_versions()  # UNIMPLEMENTED while the orchestrator is not there
    registry = await context.get_model_registry_v2(cogment.Endpoint(services.endpoint))
    torch.manual_seed(0)
    await SimpleBCModel(MODEL_ID, specs, HIDDEN_SIZES).store(registry)

    processes = {"services": services.process.pid, "components": components.process.pid, "controller": psutil.Process().pid}
    ends = TrialEnds(controller)
    try:
        def make_params(seed: int) -> cogment.TrialParameters:
            return trial_parameters(services, components, specs, args.ticks, seed)

        def profiling(phase: str):
            return profiler.recording(phase, [services, components]) if profiler else contextlib.nullcontext()

        # Warm-up (one trial): first connections, first gymnasium.make and torch calls.
        await run_trials(controller, ends, make_params, processes, seconds=0, workers=1)
        with profiling("one-trial"):
            one = await run_trials(controller, ends, make_params, processes, args.duration, workers=1)
        with profiling(f"{args.parallel}-parallel"):
            many = await run_trials(controller, ends, make_params, processes, args.duration, workers=args.parallel)

        # As long as the real trials were on average, so that both pay the same start and end per tick.
        null_ticks = max(1, round(one.ticks / max(one.trials, 1)))
        null_processes = {"services": services.process.pid, "null components": null_components.process.pid, "controller": psutil.Process().pid}

        def make_null_params(_seed: int) -> cogment.TrialParameters:
            return null_trial_parameters(services, null_components, null_ticks)

        await run_trials(controller, ends, make_null_params, null_processes, seconds=0, workers=1)
        null = await run_trials(controller, ends, make_null_params, null_processes, args.duration, workers=1)
    finally:
        ends.close()
    return one, many, null


# --- Report -------------------------------------------------------------------------------------


def describe(result: CogmentResult) -> str:
    cpu = ", ".join(f"{name} {total:.2f} [{main:.2f}]" for name, (total, main) in result.cpu_ms_per_tick.items())
    return (
        f"{result.ticks_per_second:8,.0f} ticks/s  ({result.trials} trials, {result.ticks} ticks; "
        f"CPU ms/tick [main thread]: {cpu}; cores busy: these {result.cores_used:.2f}, "
        f"machine {result.machine_cores_busy:.2f} of {psutil.cpu_count()}, steal {result.steal_cores:.2f})"
    )


async def run(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as exit_stack:
        # Unwound in reverse: child processes stop first, then their logs and data go.
        log_dir = Path(tempfile.mkdtemp(prefix="apprentice-bench-"))
        if args.keep_logs:
            print(f"logs: {log_dir}")
        else:
            exit_stack.callback(shutil.rmtree, log_dir, ignore_errors=True)
        profiler = Profiler(Path(args.py_spy), args.py_spy_rate) if args.py_spy else None

        # Every child starts first (idle until its measurement): the measurements run back to back.
        echo_server = start_child("echo", [__file__, "--echo-server"], log_dir, exit_stack)
        services = components = null_components = None
        if not args.skip_cogment:
            quiet = ["--port", "0", "--log-level", "WARNING"]
            services_command = ["-m", "apprentice.services", *quiet, "--data-dir", str(log_dir / "data")]
            services = start_child("services", services_command, log_dir, exit_stack)
            components_command = ["-m", "apprentice.components", *quiet, "--model-registry", services.endpoint,
                                  "--environment", ENVIRONMENT, "--actor", PLAYER, "--actor", TEACHER]  # fmt: skip
            components = start_child("components", components_command, log_dir, exit_stack)
            null_command = ["-m", "apprentice.components", *quiet, "--environment", NULL_ENVIRONMENT, "--actor", NULL_ACTOR]
            null_components = start_child("null-components", null_command, log_dir, exit_stack)

        echo = await measure_echo(echo_server, args.echo_seconds)
        echo_server.stop()
        echo_rate = echo.round_trips_per_second
        print(
            f"echo (grpc.aio bidi, 2 processes, {len(ECHO_PAYLOAD)} B):  {echo_rate:8,.0f} round trips/s  "
            f"(CPU ms per round trip: server {echo.server_cpu_ms:.3f}, client {echo.client_cpu_ms:.3f})"
        )

        print(f"plain Python loop, 10M additions:            {measure_python_loop():8.2f} s  (the VM's speed right now)")
        gym_rate = measure_raw_gym(args.duration, args.ticks)
        print(f"raw gymnasium loop, same policy calls:       {gym_rate:8,.0f} steps/s")

        if args.skip_cogment:
            return
        try:
            one, many, null = await measure_cogment(args, services, components, null_components, profiler)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            print(f"Cogment trials: skipped, the services have no orchestrator yet ({error.details()})")
            return

        target_one = echo_rate / 3 / 3
        target_many = 1.6 * one.ticks_per_second
        print(f"Cogment, 1 trial at a time:  {describe(one)}")
        print(f"Cogment, {args.parallel} parallel trials:   {describe(many)}")
        print(f"Cogment, do-nothing components, 1 trial: {describe(null)}")
        print()
        print(f"1 trial / echo round trips:  {one.ticks_per_second / echo_rate:6.3f}   (target >= 1/9 = 0.111)")
        print(f"1 trial / raw gym:           {one.ticks_per_second / gym_rate:6.3f}")
        print(f"do-nothing components / echo: {null.ticks_per_second / echo_rate:6.3f}   (the runtime's own ceiling)")
        speedup = many.ticks_per_second / one.ticks_per_second
        print(f"{args.parallel} parallel / 1 trial:       {speedup:6.2f}   (target >= 1.6)")
        print(
            f"target 1 trial  >= {target_one:,.0f} ticks/s: "
            f"{'met' if one.ticks_per_second >= target_one else 'NOT met'}"
        )
        print(
            f"target {args.parallel} parallel >= {target_many:,.0f} ticks/s: "
            f"{'met' if many.ticks_per_second >= target_many else 'NOT met'}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--ticks", type=int, default=200, help="steps per trial, at most (default 200)")
    parser.add_argument("--parallel", type=int, default=4, help="trials at once in the parallel run (default 4)")
    parser.add_argument("--echo-seconds", type=float, default=5.0, help="echo measurement length (default 5)")
    parser.add_argument("--skip-cogment", action="store_true", help="only the echo and raw gym measurements")
    parser.add_argument("--keep-logs", action="store_true", help="keep the subprocess logs and print where")
    parser.add_argument("--py-spy", metavar="DIR", help="profile the services and components with py-spy into DIR")
    parser.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples per second (default 100)")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)  # internal: the echo child
    return parser.parse_args()


def raise_keyboard_interrupt(_signum, _frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so that the ExitStack stops every child process."""
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.echo_server:
        asyncio.run(serve_echo())
        return
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
