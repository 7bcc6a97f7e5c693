"""Roll-out throughput: the Hopper expert through Cogment trials against the same expert in a bare loop.

    nice -n 5 .venv/bin/python bench/rollout_throughput.py [--settings 16x2 64x1 32x2 64x2 64x2c2] [--repeats 3]
        [--episodes-per-copy 1] [--episode-steps STEPS] [--expert ../shared/experts/Hopper.pkl] [--profile DIR]
        [--hidden-sizes 64 64] [--ensemble-size 1] [--ask]

Starts ``python -m apprentice.services`` (orchestrator, datastore with SQLite, model registry) and
``python -m apprentice.components`` (``GymEnvironment``, ``ImitationPlayer`` acting with an
untrained ``ImitationModel`` published in the registry, ``ExpertTeacher``), as ``bench/trial_throughput.py``
does; this process is the run: it plays roll-outs with ``apprentice.rollouts.collect_episodes``, the
path behavioral cloning takes (the expert in the teacher's seat in ``override`` mode, every tick
through the datastore and back into whole episodes by ``apprentice.episodes.EpisodeAssembler``).

The player acts at every tick even though the expert plays: ``--hidden-sizes``, ``--ensemble-size``
and ``--ask`` (its help gate on) say what that acting costs a trial's step.

For each ``NxP`` setting (N copies of Hopper-v4 per trial, P trials at once; every copy plays
``--episodes-per-copy`` episodes, so a measurement is N x P x that many episodes of ~1,000 steps)
and, right after it, the bare loop: the same expert acting on the same N Hopper-v4 environments in
this process (one batched ``act``, one ``step`` per environment, a reset when an episode ends), for
as many episodes. The VM's speed drifts by 20-40% within minutes, so the settings alternate with
the bare loop, the whole round is repeated ``--repeats`` times, and what compares is the ratio of
each Cogment measurement to the bare loop measured next to it. The CPU columns are milliseconds of
CPU per 1,000 environment steps of each process (psutil, all threads).

``--profile DIR`` runs the components under cProfile (``python -m cProfile``; written when they
stop) and profiles this process during the Cogment measurements; the top functions of both are
printed. Profiling slows everything down: take throughput from a run without it.

This is a benchmark, not a test: it prints numbers and checks nothing. Every process it starts is
stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import logging
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cogment
import gymnasium
import numpy as np
import torch
import tqdm

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from actors.bc import ImitationModel  # noqa: E402
from apprentice import cog_settings, rollouts  # noqa: E402
from apprentice.experts import ExpertPolicy, load_expert  # noqa: E402
from apprentice.help import HelpMode, HelpSettings  # noqa: E402
from apprentice.rollouts import RolloutPlan, TeacherSeat, collect_episodes  # noqa: E402
from apprentice.run import Endpoints, RunSession  # noqa: E402
from apprentice.spaces import environment_specs  # noqa: E402
from apprentice.teaching import TeacherMode  # noqa: E402
from bench.trial_throughput import cpu_seconds, machine_seconds, measure_python_loop, raise_keyboard_interrupt, start_child  # noqa: E402

ENV_ID = "Hopper-v4"
HIDDEN_SIZES = [64, 64]
ENVIRONMENT = "gym=environments.gym_environment.GymEnvironment"
PLAYER = "imitation=actors.bc.ImitationPlayer"
TEACHER = "expert=actors.expert.ExpertTeacher"
RUN_ID = "bench-rollouts"

rollouts.tqdm = functools.partial(tqdm.tqdm, disable=True)  # no progress bars from collect_episodes in the bench's output


@dataclass(frozen=True)
class Setting:
    copies: int  # N, environments per trial
    parallel: int  # P, trials at once
    components: int = 1  # K components processes, the trials spread over them (K divides P)

    @classmethod
    def parse(cls, text: str) -> Setting:
        shape, _, components = text.partition("c")
        copies, _, parallel = shape.partition("x")
        try:
            setting = cls(int(copies), int(parallel or 1), int(components or 1))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not NxP or NxPcK (copies x parallel trials, K components processes), e.g. 32x2"
            ) from None
        if min(setting.copies, setting.parallel, setting.components) < 1 or setting.parallel % setting.components:
            raise argparse.ArgumentTypeError(f"{text!r}: N, P and K must be at least 1, and K must divide P")
        return setting

    def __str__(self) -> str:
        return f"{self.copies}x{self.parallel}" + (f"c{self.components}" if self.components > 1 else "")


@dataclass(frozen=True)
class Measurement:
    steps: int
    seconds: float
    cpu_seconds: dict[str, float]  # process name: CPU seconds (all threads) during the measurement
    steal: float  # cores the hypervisor gave to other VMs during the measurement
    load: float  # the machine's 1-minute load average at the end (2 cores: above 2, others were running too)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds

    def cpu(self, process: str) -> float:
        """CPU seconds of ``process``; "components" sums every components process."""
        return sum(seconds for name, seconds in self.cpu_seconds.items() if name == process or name.startswith(f"{process}-"))

    def cpu_ms_per_kstep(self, process: str) -> float:
        """CPU milliseconds of ``process`` per 1,000 environment steps."""
        return self.cpu(process) * 1e6 / max(self.steps, 1)

    def cores(self, process: str) -> float:
        """How many cores ``process`` kept busy on average: 1.0 is a process that never waited."""
        return self.cpu(process) / self.seconds


class NoMetrics:
    """The run session's metrics sink: the bench logs nothing to MLflow."""

    def log_params(self, params: dict) -> None:
        pass

    def log_metric(self, key: str, value: float, step: int) -> None:
        pass


@contextlib.contextmanager
def measuring(processes: dict[str, int]):
    """CPU of ``processes`` and the machine's steal over the block; fills the yielded dict."""
    result: dict = {}
    before = {name: cpu_seconds(pid)[0] for name, pid in processes.items()}
    steal_before = machine_seconds()[1]
    start = time.perf_counter()
    yield result
    result["seconds"] = time.perf_counter() - start
    result["cpu"] = {name: cpu_seconds(pid)[0] - before[name] for name, pid in processes.items()}
    result["steal"] = (machine_seconds()[1] - steal_before) / result["seconds"]
    result["load"] = os.getloadavg()[0]


def measurement(steps: int, measured: dict) -> Measurement:
    return Measurement(steps, measured["seconds"], measured["cpu"], measured["steal"], measured["load"])


# --- The bare loop -------------------------------------------------------------------------------


def bare_loop(expert: ExpertPolicy, copies: int, episodes: int, make_kwargs: dict) -> Measurement:
    """The expert on ``copies`` Hopper environments in this process until ``episodes`` have been played."""
    envs = [gymnasium.make(ENV_ID, **make_kwargs) for _ in range(copies)]
    try:
        next_seed = 0
        observations = np.zeros((copies, expert.observation_size))
        playing = np.zeros(copies, dtype=bool)
        for index, env in enumerate(envs[:episodes]):
            observations[index] = env.reset(seed=next_seed)[0]
            playing[index] = True
            next_seed += 1
        steps = 0
        with measuring({"bench": os.getpid()}) as measured:
            while playing.any():
                actions = expert.act(observations)
                for index in np.flatnonzero(playing):
                    observation, _reward, terminated, truncated, _info = envs[index].step(actions[index])
                    steps += 1
                    if terminated or truncated:
                        if next_seed < episodes:
                            observation = envs[index].reset(seed=next_seed)[0]
                            next_seed += 1
                        else:
                            playing[index] = False
                    observations[index] = observation
        return measurement(steps, measured)
    finally:
        for env in envs:
            env.close()


# --- Through Cogment trials ------------------------------------------------------------------------


async def cogment_rollouts(
    sessions: list[RunSession], setting: Setting, episodes: int, make_kwargs: dict, name: str, seat: TeacherSeat, processes: dict[str, int],
    help_settings: HelpSettings | None = None,
) -> Measurement:
    """``episodes`` expert roll-outs with ``collect_episodes``, the way behavioral cloning plays them.

    ``sessions[K - 1]`` runs its trials on the first K components processes, as main does with
    ``services.components_processes=K`` (trial k on process k mod K).
    """
    specs = environment_specs(ENV_ID)
    plan = RolloutPlan(episodes, setting.copies, setting.parallel, seed=0)
    with measuring(processes) as measured:
        result = await collect_episodes(sessions[setting.components - 1], name, ENV_ID, make_kwargs, specs, plan, seat, PLAYER.partition("=")[0],
                                        help_settings=help_settings)
    if len(result.episodes) != episodes:
        print(f"  {name}: {len(result.episodes)} whole episodes of {episodes} (see the components' log)")
    return measurement(result.steps, measured)


def print_profile(title: str, stats: pstats.Stats, top: int = 30) -> None:
    for key in ("tottime", "cumulative"):
        stream = io.StringIO()
        stats.stream = stream
        stats.sort_stats(key).print_stats(top)
        print(f"--- {title}, by {key} ---")
        print("\n".join(line for line in stream.getvalue().splitlines() if line.strip())[:12000])


async def run(args: argparse.Namespace) -> None:
    expert_path = (PROJECT_ROOT / args.expert).resolve() if not Path(args.expert).is_absolute() else Path(args.expert)
    expert = load_expert(expert_path)
    make_kwargs = {"max_episode_steps": args.episode_steps} if args.episode_steps else {}
    with contextlib.ExitStack() as exit_stack:
        work_dir = Path(tempfile.mkdtemp(prefix="apprentice-rollout-bench-"))
        if args.keep_logs:
            print(f"logs: {work_dir}")
        else:
            exit_stack.callback(shutil.rmtree, work_dir, ignore_errors=True)
        quiet = ["--port", "0", "--log-level", "WARNING"]
        services = start_child(
            "services", ["-m", "apprentice.services", *quiet, "--data-dir", str(work_dir / "data")], work_dir, exit_stack
        )
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
        components = []
        for index in range(max(setting.components for setting in args.settings)):
            profiling = ["-m", "cProfile", "-o", str(Path(args.profile).absolute() / f"components-{index}.prof")] if args.profile else []
            components.append(start_child(
                f"components-{index}",
                [*profiling, "-m", "apprentice.components", *quiet, "--model-registry", services.endpoint,
                 "--environment", ENVIRONMENT, "--actor", PLAYER, "--actor", TEACHER],
                work_dir,
                exit_stack,
            ))  # fmt: skip

        context = cogment.Context(user_id="bench", cog_settings=cog_settings, prometheus_registry=None)
        sessions = []
        for count in range(1, len(components) + 1):  # sessions[K - 1]: the trials spread over the first K processes
            endpoints = Endpoints(services.endpoint, services.endpoint, services.endpoint, tuple(child.endpoint for child in components[:count]))
            sessions.append(await RunSession(RUN_ID, None, endpoints, context, NoMetrics()).open())
        torch.manual_seed(0)
        await ImitationModel(RUN_ID, environment_specs(ENV_ID), args.hidden_sizes, ensemble_size=args.ensemble_size).store(sessions[0].model_registry)
        help_settings = HelpSettings(HelpMode.ASK, budget=0.1) if args.ask else None
        seat = TeacherSeat("expert", TeacherMode.OVERRIDE, str(expert_path))
        processes = {"services": services.process.pid, "run": os.getpid(), **{child.name: child.process.pid for child in components}}

        print(f"plain Python loop, 10M additions: {measure_python_loop():.2f} s (the VM's speed right now)")
        count = len(components)  # first connections, first makes: one trial on each process
        await cogment_rollouts(sessions, Setting(2, count, count), 2 * count, make_kwargs, "warm-up", seat, processes)

        profiler = cProfile.Profile() if args.profile else None
        rows: list[tuple[int, Setting, Measurement, Measurement]] = []
        for repeat in range(args.repeats):
            for setting in args.settings:
                episodes = setting.copies * setting.parallel * args.episodes_per_copy
                if profiler:
                    profiler.enable()
                through = await cogment_rollouts(sessions, setting, episodes, make_kwargs, f"r{repeat}-{setting}", seat, processes,
                                                help_settings)
                if profiler:
                    profiler.disable()
                bare = bare_loop(expert, setting.copies, episodes, make_kwargs)
                rows.append((repeat, setting, through, bare))
                print(f"  round {repeat + 1}, {setting}: Cogment {through.steps_per_second:7,.0f} steps/s, "
                      f"bare {bare.steps_per_second:7,.0f} steps/s, ratio {through.steps_per_second / bare.steps_per_second:.2f}", flush=True)  # fmt: skip

        print()
        print_table(rows)
        if profiler:
            print_profile("the run process (collect_episodes)", pstats.Stats(profiler))
    if args.profile:  # the components wrote their profiles when they stopped, with the exit stack
        for path in sorted(Path(args.profile).absolute().glob("components-*.prof")):
            print_profile(f"the components ({path.name})", pstats.Stats(str(path)))


def print_table(rows: list[tuple[int, Setting, Measurement, Measurement]]) -> None:
    names = ("services", "components", "run")
    print(
        "| round | N x P | Cogment steps/s | bare loop steps/s | ratio | CPU ms / 1,000 steps: services, components, run (bare) "
        "| cores busy: services, components, run | steal | load |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for repeat, setting, through, bare in rows:
        cpu = ", ".join(f"{through.cpu_ms_per_kstep(name):.0f}" for name in names)
        cores = ", ".join(f"{through.cores(name):.2f}" for name in names)
        print(f"| {repeat + 1} | {setting} | {through.steps_per_second:,.0f} | {bare.steps_per_second:,.0f} | "
              f"{through.steps_per_second / bare.steps_per_second:.2f} | {cpu} ({bare.cpu_ms_per_kstep('bench'):.0f}) | {cores} | "
              f"{through.steal:.2f} | {through.load:.1f} |")  # fmt: skip
    print()
    print("| N x P | median Cogment steps/s | median bare steps/s | median ratio |")
    print("| --- | --- | --- | --- |")
    for setting in dict.fromkeys(setting for _, setting, _, _ in rows):
        mine = [(through, bare) for _, s, through, bare in rows if s == setting]
        print(f"| {setting} | {np.median([t.steps_per_second for t, _ in mine]):,.0f} | {np.median([b.steps_per_second for _, b in mine]):,.0f} | "
              f"{np.median([t.steps_per_second / b.steps_per_second for t, b in mine]):.2f} |")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", type=Setting.parse, default=[Setting.parse(s) for s in ("16x2", "64x1", "32x2", "64x2", "64x2c2")],
                        help="NxP or NxPcK: N copies per trial, P trials at once, over K components processes (default 16x2 64x1 32x2 64x2 64x2c2)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the settings (default 3)")
    parser.add_argument("--episodes-per-copy", type=int, default=1, help="episodes each copy plays per measurement (default 1)")
    parser.add_argument("--episode-steps", type=int, help="max_episode_steps of Hopper-v4 (default: its own, 1,000)")
    parser.add_argument("--expert", default="../shared/experts/Hopper.pkl", help="the Hopper expert, relative to the project root")
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=HIDDEN_SIZES, help="the learner's hidden layers (default 64 64)")
    parser.add_argument("--ensemble-size", type=int, default=1, help="networks in the learner's ensemble (default 1)")
    parser.add_argument("--ask", action="store_true", help="the learner asks for help (run.help.mode=ask, budget 0.1): its gate runs every step")
    parser.add_argument("--profile", metavar="DIR", help="cProfile the components and this process; the components' profile goes to DIR")
    parser.add_argument("--keep-logs", action="store_true", help="keep the subprocess logs and print where")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*Hopper-v4 is out of date")  # the experts were measured on -v4
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
