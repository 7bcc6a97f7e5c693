"""Soak benchmark: N trials of the main job back to back; memory of every process; nothing lost.

    .venv/bin/python bench/soak.py [--trials 1000] [--reference-trial 100]

Runs ``python -m main +experiment=simple_bc/mountain_car teacher=scripted run.num_trials=N`` on
free ports with its data in a temporary directory: the real main job, its Cogment services and
its components, learning online as usual. Meanwhile this script is a Cogment client of the run's
services: it watches the orchestrator for ended trials (their last tick id is how many ticks each
trial played) and samples the RSS of every process of the run every second.

At the end it prints:

- the RSS of each process (main, services, components) at the reference trial and at the last
  one, and their ratio (the target: within 10% of the value at trial 100 after 1,000 trials);
- whether the trial datastore holds every tick of every trial: for each trial the orchestrator
  reported ended, the stored samples must be exactly ticks 0 .. last tick;
- main's exit code, and how often the components were restarted (a crash).

This is a benchmark, not a test: it prints numbers and checks nothing. Every process it starts is
stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cogment

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from apprentice import cog_settings  # noqa: E402 - after the project root is importable
from apprentice.launcher import wait_until_reachable  # noqa: E402
from apprentice.run import RUN_ID_PROPERTY  # noqa: E402
from bench.main_job import MainJob, main_job, stored_data, work_directory  # noqa: E402

RUN_ID = "soak"


@dataclass
class Observations:
    """What the soak saw: ticks per ended trial, and RSS per process after each count of trials."""

    last_tick: dict[str, int] = field(default_factory=dict)  # trial id -> its last tick id
    rss: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (trials ended, MiB per role)


async def watch_ended_trials(controller, observations: Observations) -> None:
    async for info in controller.watch_trials([cogment.TrialState.ENDED], full_info=True):
        observations.last_tick[info.trial_id] = info.tick_id


async def sample_rss(job: MainJob, observations: Observations, period: float = 1.0) -> None:
    while True:
        try:
            observations.rss.append((len(observations.last_tick), job.rss_by_role()))
        except Exception:  # noqa: BLE001 - a process ended between the listing and the reading
            pass
        await asyncio.sleep(period)


async def stored_tick_ids(datastore) -> dict[str, list[int]]:
    """Every trial of the run in the datastore, with the tick ids of its stored samples."""
    ticks: dict[str, list[int]] = {}
    async for info in datastore.all_trials(bundle_size=100, properties={RUN_ID_PROPERTY: RUN_ID}):
        ticks[info.trial_id] = [sample.tick_id async for sample in datastore.all_samples([info])]
    return ticks


def rss_at(observations: Observations, trials: int) -> tuple[int, dict[str, float]]:
    """The first RSS sample taken once ``trials`` trials had ended, every process of the run still up."""
    complete = [(ended, rss) for ended, rss in observations.rss if {"services", "components"} <= rss.keys()]
    return next(((ended, rss) for ended, rss in complete if ended >= trials), complete[-1])


async def soak(args: argparse.Namespace, work_dir: Path) -> None:
    overrides = ["+experiment=simple_bc/mountain_car", "teacher=scripted", f"run.num_trials={args.trials}", f"run_id={RUN_ID}"]
    observations = Observations()
    started = time.monotonic()
    with main_job(work_dir, overrides) as job:
        await wait_until_reachable(job.services_endpoint, timeout=120)
        context = cogment.Context(user_id="soak", cog_settings=cog_settings, prometheus_registry=None)
        controller = context.get_controller(cogment.Endpoint(job.services_endpoint))
        tasks = [
            asyncio.create_task(watch_ended_trials(controller, observations)),
            asyncio.create_task(sample_rss(job, observations)),
        ]
        last_report = 0
        while job.process.poll() is None:
            await asyncio.sleep(1.0)
            if len(observations.last_tick) >= last_report + 100 and observations.rss:
                last_report = len(observations.last_tick) // 100 * 100
                rss = ", ".join(f"{role} {mib:.0f}" for role, mib in observations.rss[-1][1].items())
                print(f"{last_report:5d} trials, {time.monotonic() - started:6.0f} s; RSS MiB: {rss}", flush=True)
        for task in tasks:
            task.cancel()
        seconds = time.monotonic() - started
        console = job.console
    async with stored_data(work_dir) as datastore:
        stored = await stored_tick_ids(datastore)
    report(args, observations, stored, job.process.returncode, console, seconds)


def report(args, observations: Observations, stored: dict[str, list[int]], exit_code: int, console: str, seconds: float) -> None:
    ended = observations.last_tick
    incomplete = [trial for trial, last in ended.items() if stored.get(trial) != list(range(last + 1))]
    ticks = sum(last + 1 for last in ended.values())
    print()
    print(f"main exit code {exit_code}; {len(ended)} trials ended, {ticks:,} ticks in {seconds:.0f} s; "
          f"components restarts: {console.count('starting it again')}")  # fmt: skip
    print(f"datastore: {len(stored)} trials stored; trials whose stored ticks differ from those played: {len(incomplete)}")
    if observations.rss:
        (_, reference), (last_count, last) = rss_at(observations, args.reference_trial), rss_at(observations, len(ended))
        print(f"RSS (MiB) at trial {args.reference_trial} -> at trial {last_count}:")
        for role in last:
            before = reference.get(role, float("nan"))
            print(f"  {role:12s} {before:8.1f} -> {last[role]:8.1f}   ratio {last[role] / before:5.3f}   (target <= 1.10)")
    if exit_code != 0:
        print("main's last lines:\n" + "\n".join(console.splitlines()[-15:]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--reference-trial", type=int, default=100, help="RSS is compared with its value at this trial")
    parser.add_argument("--keep", action="store_true", help="keep the run's data and logs (the path is printed)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.ERROR)  # the SDK warns when the run's services stop under its watch
    with work_directory("apprentice-soak-", args.keep) as work_dir:
        asyncio.run(soak(args, work_dir))


if __name__ == "__main__":
    main()
