"""Apprentice's main job: ``python -m main +experiment=simple_bc/mountain_car``.

1. Start what the config does not point elsewhere, each as a child process: the Cogment services
   (orchestrator, datastore, model registry) and the components (environment and actors).
2. Build the run implementation named by ``run.class_name`` and run it: it starts the trials and
   learns from their samples. Metrics go to MLflow (``python -m simple_mlflow`` shows them).
3. Stop the child processes, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cogment
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from apprentice import cog_settings
from apprentice.launcher import ChildServer, SupervisedServer, start_python
from apprentice.metrics import MetricsLogger
from apprentice.run import CLIENT_IMPLEMENTATION, Endpoints, RunSession

log = logging.getLogger("main")


def load_class(class_path: str, what: str):
    module_name, _, class_name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise SystemExit(f"{what} = {class_path!r} cannot be loaded ({error}): give a module.Class path") from None


def start_child(name: str, args: list[str], log_path: Path, supervised: bool = False) -> ChildServer | SupervisedServer:
    """``python *args`` as a child process; if it cannot start, exit with its log's reason."""
    try:
        return SupervisedServer(name, args, log_path) if supervised else start_python(name, args, log_path)
    except RuntimeError as error:
        hint = "" if "port is in use" not in str(error) else (
            "\nFrom main.py, change the ports with services.port=, services.components_port= or web.port=."
        )
        raise SystemExit(f"{error}{hint}") from None


@contextlib.contextmanager
def child_servers(cfg: DictConfig, log_dir: Path, run_id: str) -> Iterator[tuple[Endpoints, list[SupervisedServer], str | None]]:
    """Start the services, the components and the web page unless the config names running ones.

    The components (actor and environment services) are supervised: if they crash, the trial they
    served ends with a reason and they are started again for the next trials. Yields the endpoints,
    the supervised children and the web page's URL (None when no person teaches).
    """
    started: list[ChildServer | SupervisedServer] = []
    supervised: list[SupervisedServer] = []
    services = cfg.services
    web_url = None
    try:
        own_services = None
        if not (services.orchestrator_endpoint and services.datastore_endpoint and services.model_registry_endpoint):
            args = ["--port", str(services.port), "--host", services.host, "--data-dir", str(Path(cfg.data_dir).absolute())]
            own_services = start_child("Cogment services", ["-m", "apprentice.services", *args], log_dir / "services.log")
            started.append(own_services)
        orchestrator = services.orchestrator_endpoint or own_services.endpoint
        datastore = services.datastore_endpoint or own_services.endpoint
        model_registry = services.model_registry_endpoint or own_services.endpoint

        components = services.components_endpoint
        if not components:
            args = ["--port", str(services.components_port), "--model-registry", model_registry]
            for name, implementation in services.environments.items():
                args += ["--environment", f"{name}={implementation.class_name}"]
            for name, implementation in services.actors.items():
                args += ["--actor", f"{name}={implementation.class_name}"]
            supervised.append(start_child("components", ["-m", "apprentice.components", *args], log_dir / "components.log", supervised=True))
            started.append(supervised[-1])
            components = supervised[-1].endpoint

        if cfg.run.teacher.implementation == CLIENT_IMPLEMENTATION:
            web = cfg.web
            args = ["--port", str(web.port), "--host", web.host, "--orchestrator", orchestrator,
                    "--steps-per-second", str(web.steps_per_second), "--run-id", run_id, "--model-registry", model_registry]
            if web.key_maps:
                args += ["--key-map", json.dumps(OmegaConf.to_container(web.key_maps))]
            started.append(start_child("web page", ["-m", "web", *args], log_dir / "web.log"))
            web_url = f"http://{web.host}:{started[-1].port}"
            print(f"Teach the agent at {web_url}", flush=True)
        yield Endpoints(orchestrator, datastore, model_registry, components), supervised, web_url
    finally:
        for child in reversed(started):
            child.stop()


def build_training(cfg: DictConfig):
    """The run implementation; a config it refuses stops ``main`` before anything starts."""
    try:
        return load_class(cfg.run.class_name, "run.class_name")(cfg.run)
    except ValueError as error:
        raise SystemExit(f"Bad run config: {error}") from None


async def run_experiment(cfg: DictConfig, training, run_id: str, endpoints: Endpoints, supervised: list[SupervisedServer], data_dir: Path) -> None:
    watchers = [asyncio.create_task(server.watch()) for server in supervised]
    metrics = MetricsLogger(data_dir=data_dir, server_port=cfg.mlflow.port)
    metrics.start_run(cfg.mlflow.experiment_name, run_name=run_id, resume=bool(cfg.resume))
    context = cogment.Context(user_id="apprentice", cog_settings=cog_settings)
    try:
        run_session = await RunSession(run_id, cfg.run, endpoints, context, metrics).open()
        await training.impl(run_session)
    except BaseException:
        metrics.close("FAILED")
        raise
    finally:
        for watcher in watchers:
            watcher.cancel()
    metrics.close()


CONFIG_DIR = Path(__file__).resolve().parent / "config"


def available_experiments() -> list[str]:
    experiments = CONFIG_DIR / "experiment"
    return sorted(str(path.relative_to(experiments).with_suffix("")) for path in experiments.rglob("*.yaml"))


def check_experiment_choice(arguments: list[str]) -> None:
    """Hydra only says "could not find" for an unknown ``+experiment``: list the available ones."""
    for argument in arguments:
        if argument.startswith("+experiment="):
            choice = argument.partition("=")[2]
            if choice not in available_experiments():
                raise SystemExit(f"Unknown experiment {choice!r}. Available: {', '.join(available_experiments())}")


@hydra.main(version_base=None, config_path="config", config_name="config")
def main(cfg: DictConfig) -> None:
    if "class_name" not in cfg.get("run", {}):
        raise SystemExit(f"Choose an experiment with +experiment=NAME; available: {', '.join(available_experiments())}")
    log_dir = Path(HydraConfig.get().runtime.output_dir)
    data_dir = Path(cfg.data_dir).absolute()
    experiment = HydraConfig.get().runtime.choices.get("experiment", "run").replace("/", "-")
    run_id = cfg.resume or cfg.run_id or f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    training = build_training(cfg)
    print(f"Run {run_id} ({cfg.run.class_name}), logs in {log_dir}", flush=True)
    with child_servers(cfg, log_dir, run_id) as (endpoints, supervised, web_url):
        asyncio.run(run_experiment(cfg, training, run_id, endpoints, supervised, data_dir))
        if web_url and cfg.web.stay_open_after_run:
            print(f"Run {run_id} finished: its summary is on the page at {web_url}. Ctrl-C to quit.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)


if __name__ == "__main__":
    check_experiment_choice(sys.argv[1:])
    main()
