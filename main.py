"""Apprentice's main job: ``python -m main`` (Hydra config in ``config/``).

It starts the Cogment services and the environment/actor components as child processes (unless
the config names running ones), then runs MountainCar demo trials through them and prints one
line per trial. Human-in-the-loop behavioral cloning will replace the demo run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import cogment
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from apprentice import cog_settings
from apprentice.launcher import ChildServer, start_python
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig
from apprentice.spaces import environment_specs

log = logging.getLogger("main")


@contextlib.contextmanager
def child_servers(cfg: DictConfig, log_dir: Path):
    """Start what the config does not point elsewhere; stop it on the way out."""
    started: list[ChildServer] = []
    try:
        services_endpoint = cfg.services.orchestrator_endpoint
        if services_endpoint is None:
            args = ["--port", str(cfg.services.port), "--host", cfg.services.host, "--data-dir", str(Path(cfg.data_dir).absolute())]
            started.append(start_python("Cogment services", ["-m", "apprentice.services", *args], log_dir / "services.log"))
            services_endpoint = started[-1].endpoint
        components_endpoint = cfg.components.endpoint
        if components_endpoint is None:
            args = ["--port", str(cfg.components.port)]
            started.append(start_python("components", ["-m", "environments", *args], log_dir / "components.log"))
            components_endpoint = started[-1].endpoint
        yield services_endpoint, components_endpoint
    finally:
        for child in reversed(started):
            child.stop()


def demo_trial_params(env_id: str, seed: int, components_endpoint: str, datalog_endpoint: str) -> cogment.TrialParameters:
    specs = environment_specs(env_id)
    actor_config = ActorConfig(environment_specs=specs, seed=seed)
    return cogment.TrialParameters(
        cog_settings,
        environment_name="env",
        environment_endpoint=components_endpoint,
        environment_implementation="gym",
        environment_config=EnvironmentConfig(env_id=env_id, seed=seed),
        datalog_endpoint=datalog_endpoint,
        actors=[
            cogment.ActorParameters(
                cog_settings, name="player", class_name="player", endpoint=components_endpoint,
                implementation="mlp_policy", config=actor_config,
            ),
            cogment.ActorParameters(
                cog_settings, name="teacher", class_name="teacher", endpoint=components_endpoint,
                implementation="scripted_teacher", config=actor_config,
            ),
        ],
    )


async def run_demo(cfg: DictConfig, services_endpoint: str, components_endpoint: str) -> None:
    context = cogment.Context(user_id="apprentice", cog_settings=cog_settings)
    controller = context.get_controller(cogment.Endpoint(services_endpoint))
    datastore_endpoint = cfg.services.datastore_endpoint or services_endpoint
    datastore = context.get_datastore(cogment.Endpoint(datastore_endpoint))
    for trial_index in range(cfg.demo.num_trials):
        params = demo_trial_params(cfg.demo.env_id, cfg.demo.seed + trial_index, components_endpoint, datastore_endpoint)
        trial_id = await controller.start_trial(trial_params=params)
        steps, total_return, teacher_steps = 0, 0.0, 0
        trial_infos = await datastore.get_trials([trial_id])
        async for sample in datastore.all_samples(trial_infos):
            if sample.trial_state == cogment.TrialState.ENDED:
                continue  # the final observation, after the last action
            player = sample.actors_data["player"]
            teacher = sample.actors_data["teacher"]
            steps += 1
            total_return += player.reward or 0.0
            teacher_steps += teacher.action is not None and teacher.action.HasField("value")
        print(
            f"trial {trial_index + 1}/{cfg.demo.num_trials} {trial_id[:8]}: {steps} steps, return {total_return:.1f}, "
            f"teacher acted on {teacher_steps / max(steps, 1):.0%} of steps",
            flush=True,
        )


@hydra.main(version_base=None, config_path="config", config_name="config")
def main(cfg: DictConfig) -> None:
    log_dir = Path(HydraConfig.get().runtime.output_dir)
    with child_servers(cfg, log_dir) as (services_endpoint, components_endpoint):
        print(f"Cogment services: {services_endpoint}   components: {components_endpoint}   logs: {log_dir}", flush=True)
        asyncio.run(run_demo(cfg, services_endpoint, components_endpoint))


if __name__ == "__main__":
    main()
