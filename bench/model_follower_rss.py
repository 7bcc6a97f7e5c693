"""Components' RSS over trials whose player picks up new model iterations mid-trial.

    .venv/bin/python bench/model_follower_rss.py [--trials 301] [--ticks 200] [--publications 3] [--player NAME=CLASS]

Starts the Cogment services and ``python -m apprentice.components`` (SimpleBC player following the
latest iteration, scripted teacher, gym environment) as children, then plays MountainCar trials
one after another as their controller, storing a new model iteration ``--publications`` times
during each trial, 0.1 s apart, so that the player retrieves them while it plays. Prints the
components' RSS every 100 trials and its ratio between trial 300 and trial 100.

This is what ``apprentice.model_follower`` fixed: with one VersionUpdate stream per trial the RSS
grew ~80 KB a trial (ratio ~1.06); see that module's docstring. A benchmark, not a test: it prints
numbers and checks nothing. Every process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import uuid
from pathlib import Path

import cogment
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.simple_bc import SimpleBCModel
from apprentice import cog_settings
from apprentice.spaces import environment_specs
from bench.trial_throughput import (
    ENV_ID,
    ENVIRONMENT,
    HIDDEN_SIZES,
    MODEL_ID,
    PLAYER,
    TEACHER,
    TrialEnds,
    start_child,
    trial_parameters,
)


async def measure(trials: int, ticks: int, publications: int, player: str) -> dict[int, float]:
    """The components' RSS (MiB) after trial 0, 100, 200..."""
    rss: dict[int, float] = {}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        quiet = ["--port", "0", "--log-level", "WARNING"]
        services = start_child("services", ["-m", "apprentice.services", *quiet, "--data-dir", str(directory / "data")], directory, stack)
        components = start_child(
            "components",
            ["-m", "apprentice.components", *quiet, "--model-registry", services.endpoint,
             "--environment", ENVIRONMENT, "--actor", player, "--actor", TEACHER],
            directory,
            stack,
        )
        specs = environment_specs(ENV_ID)
        context = cogment.Context(user_id="bench", cog_settings=cog_settings, prometheus_registry=None)
        controller = context.get_controller(cogment.Endpoint(services.endpoint))
        registry = await context.get_model_registry_v2(cogment.Endpoint(services.endpoint))
        torch.manual_seed(0)
        model = SimpleBCModel(MODEL_ID, specs, HIDDEN_SIZES)
        await model.store(registry)
        ends = TrialEnds(controller)
        process = psutil.Process(components.process.pid)
        try:
            for index in range(trials):
                trial_id = f"rss-{uuid.uuid4()}"
                ends.expect(trial_id)
                await controller.start_trial(trial_id_requested=trial_id, trial_params=trial_parameters(services, components, specs, ticks, index))
                for _ in range(publications):
                    await asyncio.sleep(0.1)
                    await model.store(registry, loss=1.0)
                await ends.wait(trial_id)
                if index % 100 == 0:
                    rss[index] = process.memory_info().rss / 2**20
                    print(f"trial {index:4d}  components RSS {rss[index]:.1f} MiB", flush=True)
        finally:
            ends.close()
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=301)
    parser.add_argument("--ticks", type=int, default=200, help="ticks per trial (default 200)")
    parser.add_argument("--publications", type=int, default=3, help="iterations stored during each trial (default 3)")
    parser.add_argument("--player", default=PLAYER, help=f"the player implementation to serve, named simple_bc (default {PLAYER})")
    args = parser.parse_args()
    rss = asyncio.run(measure(args.trials, args.ticks, args.publications, args.player))
    if 100 in rss and 300 in rss:
        print(f"RSS at trial 300 / trial 100: {rss[300] / rss[100]:.4f} ({(rss[300] - rss[100]) * 1024 / 200:.1f} KiB a trial)")


if __name__ == "__main__":
    main()
