"""Trial throughput benchmark: how many ticks per second Apprentice's Cogment stack runs.

    .venv/bin/python bench/trial_throughput.py [--duration 10] [--ticks 200] [--parallel 4]

Measured in one run, on this machine:

1. echo: round trips/s of a plain grpc.aio bidirectional stream between two processes (strict
   ping-pong, ~100-byte messages). It is the practical ceiling of Python gRPC here.
2. raw gym: MountainCar steps/s with the same policy and teacher calls, no Cogment.
3. Cogment, one trial at a time, then ``--parallel`` trials at once: the real thing through the SDK.
   ``python -m apprentice.services`` (orchestrator + datastore, datalog on) and
   ``python -m environments`` (gym environment, MLP player, scripted teacher) run as subprocesses;
   this process is the controller. No rendering.

Targets (the project's): one trial >= (echo round trips/s / 3) / 3 ticks/s, i.e. a tick may cost
about three round trips (action set -> env observations, observations -> actor actions, plus the
rewards and datalog traffic) with a 3x allowance for Python work; ``--parallel`` trials >= 1.6x one
trial. The CPU ms/tick printed per process shows where the time goes.

This is a benchmark, not a test: it prints numbers and checks nothing. Every process it starts is
stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import shutil
import signal
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
from cogment.control import Controller

from actors import mlp_policy, scripted_teacher
from actors.mlp_policy import GreedyPolicy, MlpPolicy
from actors.scripted_teacher import MountainCarTeacher
from apprentice import cog_settings
from apprentice.launcher import ChildServer, start_python
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig, EnvironmentSpecs
from apprentice.spaces import environment_specs
from environments import gym_environment

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "MountainCar-v0"
ECHO_METHOD = "/bench.Echo/PingPong"
ECHO_PAYLOAD = b"x" * 100

log = logging.getLogger("bench")


# --- Child processes ---------------------------------------------------------------------------


def start_child(name: str, args: list[str], log_dir: Path, exit_stack: contextlib.ExitStack) -> ChildServer:
    """``python *args`` once it listens, stopped when ``exit_stack`` closes."""
    child = start_python(name, args, log_dir / f"{name}.log")
    exit_stack.callback(child.stop)
    return child


def cpu_seconds(child: ChildServer) -> float:
    """User + system CPU time so far, all threads (gRPC does much of its work off the main one)."""
    times = psutil.Process(child.process.pid).cpu_times()
    return times.user + times.system


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


async def measure_echo(echo: ChildServer, seconds: float) -> float:
    """Strict ping-pong on one stream for ``seconds``; returns round trips/s."""
    # A local subchannel pool closes the connection with the channel (no GOAWAY log when the server stops).
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{echo.port}", options=options) as channel:
        call = channel.stream_stream(ECHO_METHOD)()
        for _ in range(200):  # warm-up: connection, HTTP/2 windows
            await call.write(ECHO_PAYLOAD)
            await call.read()
        round_trips = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            await call.write(ECHO_PAYLOAD)
            await call.read()
            round_trips += 1
        elapsed = time.perf_counter() - start
        await call.done_writing()
        call.cancel()
    return round_trips / elapsed


# --- 2. Raw gymnasium loop ----------------------------------------------------------------------


def measure_raw_gym(seconds: float, ticks: int) -> float:
    """MountainCar with the same calls the actors make per step (policy + teacher), no Cogment."""
    env = gymnasium.make(ENV_ID, max_episode_steps=ticks)
    policy = GreedyPolicy(MlpPolicy(env.observation_space, env.action_space, seed=0))
    teacher = MountainCarTeacher(seed=0)
    observation, _ = env.reset(seed=0)
    steps = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        player_action = policy.act(observation)
        teacher_action = teacher.decide(observation)
        action = player_action if teacher_action is None else teacher_action
        observation, _reward, terminated, truncated, _ = env.step(action)
        steps += 1
        if terminated or truncated:
            observation, _ = env.reset()
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
            except asyncio.TimeoutError:
                infos = await self.controller.get_trial_info([trial_id])
                if infos and infos[0].state == cogment.TrialState.ENDED:
                    return infos[0].tick_id
        raise TimeoutError(f"trial {trial_id} did not end within {timeout} s")

    def close(self) -> None:
        self.task.cancel()


def trial_parameters(
    services: ChildServer, components: ChildServer, specs: EnvironmentSpecs, ticks: int, seed: int
) -> cogment.TrialParameters:
    """One MountainCar trial: MLP player + scripted teacher, datalog to the services, no rendering."""
    actors = [
        cogment.ActorParameters(
            cog_settings,
            name="player",
            class_name=cog_settings.PLAYER_ACTOR_CLASS,
            endpoint=components.endpoint,
            implementation=mlp_policy.IMPLEMENTATION_NAME,
            config=ActorConfig(environment_specs=specs, seed=seed),
        ),
        cogment.ActorParameters(
            cog_settings,
            name="teacher",
            class_name=cog_settings.TEACHER_ACTOR_CLASS,
            endpoint=components.endpoint,
            implementation=scripted_teacher.IMPLEMENTATION_NAME,
            config=ActorConfig(environment_specs=specs, seed=seed),
        ),
    ]
    return cogment.TrialParameters(
        cog_settings,
        environment_endpoint=components.endpoint,
        environment_implementation=gym_environment.IMPLEMENTATION_NAME,
        environment_config=EnvironmentConfig(
            env_id=ENV_ID, seed=seed, render=False, make_kwargs_json=json.dumps({"max_episode_steps": ticks})
        ),
        datalog_endpoint=services.endpoint,
        actors=actors,
    )


@dataclass
class CogmentResult:
    ticks_per_second: float
    trials: int
    ticks: int
    cpu_ms_per_tick: dict[str, float]


async def run_trials(
    controller: Controller,
    ends: TrialEnds,
    make_params: Callable[[int], cogment.TrialParameters],
    children: list[ChildServer],
    seconds: float,
    workers: int,
) -> CogmentResult:
    """``workers`` loops, each starting trials back to back until ``seconds`` have passed.

    Ticks are counted from each trial's last tick id; the rate is over the wall time until the last
    trial ended.
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

    cpu_before = {child.name: cpu_seconds(child) for child in children}
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - start
    ticks = max(totals["ticks"], 1)
    cpu = {child.name: (cpu_seconds(child) - cpu_before[child.name]) * 1000 / ticks for child in children}
    return CogmentResult(totals["ticks"] / elapsed, totals["trials"], totals["ticks"], cpu)


async def measure_cogment(
    args: argparse.Namespace, log_dir: Path, exit_stack: contextlib.ExitStack
) -> tuple[CogmentResult, CogmentResult]:
    """Start the services and the components, then measure one trial and ``--parallel`` trials."""
    data_dir = log_dir / "data"
    quiet = ["--port", "0", "--log-level", "WARNING"]
    services_command = ["-m", "apprentice.services", *quiet, "--data-dir", str(data_dir)]
    services = start_child("services", services_command, log_dir, exit_stack)
    components = start_child("components", ["-m", "environments", *quiet], log_dir, exit_stack)
    children = [services, components]
    specs = environment_specs(ENV_ID)

    context = cogment.Context(user_id="bench", cog_settings=cog_settings)
    controller = context.get_controller(cogment.Endpoint(services.endpoint))
    await controller.get_remote_versions()  # UNIMPLEMENTED while the orchestrator is not there
    ends = TrialEnds(controller)
    try:
        def make_params(seed: int) -> cogment.TrialParameters:
            return trial_parameters(services, components, specs, args.ticks, seed)

        # Warm-up (one trial): first connections, first gymnasium.make and torch calls.
        await run_trials(controller, ends, make_params, children, seconds=0, workers=1)
        one = await run_trials(controller, ends, make_params, children, args.duration, workers=1)
        many = await run_trials(controller, ends, make_params, children, args.duration, workers=args.parallel)
    finally:
        ends.close()
    return one, many


# --- Report -------------------------------------------------------------------------------------


def describe(result: CogmentResult) -> str:
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in result.cpu_ms_per_tick.items())
    return (
        f"{result.ticks_per_second:8,.0f} ticks/s  ({result.trials} trials, {result.ticks} ticks; "
        f"CPU ms/tick: {cpu})"
    )


async def run(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as exit_stack:
        # Unwound in reverse: child processes stop first, then their logs and data go.
        log_dir = Path(tempfile.mkdtemp(prefix="apprentice-bench-"))
        if args.keep_logs:
            print(f"logs: {log_dir}")
        else:
            exit_stack.callback(shutil.rmtree, log_dir, ignore_errors=True)

        echo = start_child("echo", [__file__, "--echo-server"], log_dir, exit_stack)
        echo_rate = await measure_echo(echo, args.echo_seconds)
        echo.stop()
        print(f"echo (grpc.aio bidi, 2 processes, {len(ECHO_PAYLOAD)} B):  {echo_rate:8,.0f} round trips/s")

        gym_rate = measure_raw_gym(args.duration, args.ticks)
        print(f"raw gymnasium loop, same policy calls:       {gym_rate:8,.0f} steps/s")

        if args.skip_cogment:
            return
        try:
            one, many = await measure_cogment(args, log_dir, exit_stack)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            print(f"Cogment trials: skipped, the services have no orchestrator yet ({error.details()})")
            return

        target_one = echo_rate / 3 / 3
        target_many = 1.6 * one.ticks_per_second
        print(f"Cogment, 1 trial at a time:  {describe(one)}")
        print(f"Cogment, {args.parallel} parallel trials:   {describe(many)}")
        print()
        print(f"1 trial / echo round trips:  {one.ticks_per_second / echo_rate:6.3f}   (target >= 1/9 = 0.111)")
        print(f"1 trial / raw gym:           {one.ticks_per_second / gym_rate:6.3f}")
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
