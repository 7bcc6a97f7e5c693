"""Apprentice's main job: ``python -m main +experiment=simple_bc/mountain_car``.

1. Start what the config does not point elsewhere, each as a child process: the Cogment services
   (orchestrator, datastore, model registry) and the components (environment and actors).
2. Build the run implementation named by ``run.class_name`` and run it: it starts the trials and
   learns from their samples. Metrics go to MLflow (``python -m simple_mlflow`` shows them).
3. Stop the child processes, whatever happened (an error, Ctrl-C, SIGTERM).

Every setting is checked before anything starts; a child that dies for good (the services, or
components that cannot be started again) ends the run with one message saying how to resume it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import importlib
import json
import logging
import shlex
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn

import cogment
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from apprentice import cog_settings
from apprentice.launcher import ChildExited, ChildServer, SupervisedServer, start_python, stop_all, watch_exit
from apprentice.metrics import MetricsLogger
from apprentice.run import CLIENT_IMPLEMENTATION, Endpoints, RunSession, ServicesUnavailable
from web.help_request import help_pace

log = logging.getLogger("main")
Watcher = Callable[[], Coroutine[Any, Any, NoReturn]]  # raises ChildExited when its child is gone for good
CHILD_EXIT_GRACE = 3.0  # s a failed run waits to learn whether a child's exit made it fail


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
def child_servers(cfg: DictConfig, log_dir: Path, run_id: str) -> Iterator[tuple[Endpoints, list[Watcher], str | None]]:
    """Start the services, the components and the web page unless the config names running ones.

    The components (actor and environment services) are supervised: if they crash, the trial they
    served ends with a reason and they are started again for the next trials. Yields the endpoints,
    the watchers of the children the run needs (each raises ChildExited when its child is gone for
    good) and the web page's URL (None when no person teaches).
    """
    started: list[ChildServer | SupervisedServer] = []
    watchers: list[Watcher] = []
    services = cfg.services
    web_url = None
    try:
        own_services = None
        if starts_own_services(services):
            args = ["--port", str(services.port), "--host", services.host, "--data-dir", str(Path(cfg.data_dir).absolute())]
            own_services = start_child("Cogment services", ["-m", "apprentice.services", *args], log_dir / "services.log")
            started.append(own_services)
            watchers.append(functools.partial(watch_exit, own_services, log_dir / "services.log"))
        orchestrator = services.orchestrator_endpoint or own_services.endpoint
        datastore = services.datastore_endpoint or own_services.endpoint
        model_registry = services.model_registry_endpoint or own_services.endpoint

        components = components_endpoints(services)
        if not components:
            implementations = []
            for name, implementation in services.environments.items():
                implementations += ["--environment", f"{name}={implementation.class_name}"]
            for name, implementation in services.actors.items():
                implementations += ["--actor", f"{name}={implementation.class_name}"]
            for index, port in enumerate(components_ports(services)):
                args = ["--port", str(port), "--host", services.host, "--model-registry", model_registry, *implementations]
                name, log_name = ("components", "components.log") if index == 0 else (f"components {index}", f"components-{index}.log")
                supervised = start_child(name, ["-m", "apprentice.components", *args], log_dir / log_name, supervised=True)
                started.append(supervised)
                watchers.append(supervised.watch)
                components = (*components, supervised.endpoint)

        if cfg.run.teacher.implementation == CLIENT_IMPLEMENTATION:
            web = cfg.web
            args = ["--port", str(web.port), "--host", web.host, "--orchestrator", orchestrator,
                    "--steps-per-second", str(web.steps_per_second), "--run-id", run_id, "--model-registry", model_registry,
                    "--max-connections", str(web.max_connections), "--help-timeout", str(web.help_timeout)]
            if web.help_steps_per_second is not None:
                args += ["--help-steps-per-second", str(web.help_steps_per_second)]
            allowed_hosts = web.allowed_hosts if OmegaConf.is_list(web.allowed_hosts) else [web.allowed_hosts]  # one name alone
            args += [f"--allowed-host={host}" for host in allowed_hosts]
            if web.wait_for_teacher:
                args.append("--wait-for-teacher")
            if web.key_maps:
                args += ["--key-map", json.dumps(OmegaConf.to_container(web.key_maps))]
            started.append(start_child("web page", ["-m", "web", *args], log_dir / "web.log"))
            web_url = f"http://{web.host}:{started[-1].port}"
            print(f"Teach the agent at {web_url}", flush=True)
        yield Endpoints(orchestrator, datastore, model_registry, components, web_page=web_url), watchers, web_url
    finally:
        stop_all(list(reversed(started)))


def components_endpoints(services: DictConfig) -> tuple[str, ...]:
    """The components the config names (one endpoint or a list), or () when main starts its own."""
    endpoints = services.components_endpoint
    if not endpoints:
        return ()
    return tuple(endpoints) if OmegaConf.is_list(endpoints) else (endpoints,)


def components_ports(services: DictConfig) -> list:
    """The ports of the components processes main starts: components_port, components_port + 1, ... (0: free ones)."""
    port = services.components_port
    count = services.components_processes
    return [port if port == 0 else port + index for index in range(count)] if isinstance(port, int) else [port]


def starts_own_services(services: DictConfig) -> bool:
    """Whether main starts the Cogment services: the config names no running ones."""
    return not (services.orchestrator_endpoint and services.datastore_endpoint and services.model_registry_endpoint)


def check_config(cfg: DictConfig):
    """Every setting, before anything starts: the run implementation, built (it checks the ``run``
    section), the ports main will serve on and the data dir. A bad one stops ``main`` with one line
    naming the setting, the problem and the fix."""
    try:
        training = load_class(cfg.run.class_name, "run.class_name")(cfg.run)
    except ValueError as error:
        raise SystemExit(f"Bad run config: {error}") from None
    if cfg.resume and not getattr(training, "RESUMABLE", False):
        raise SystemExit(f"resume={cfg.resume}: {cfg.run.class_name} runs cannot be resumed; start a new run (the old one's samples stay in the datastore)")
    services = cfg.services
    ports = []
    if starts_own_services(services):
        ports.append(("services.port", services.host, services.port))
    count = services.components_processes
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 16:
        raise SystemExit(f"services.components_processes={count!r}: give the number of components processes, from 1 to 16")
    if not services.components_endpoint:
        ports += [("services.components_port", services.host, port) for port in components_ports(services)]
    if cfg.run.teacher.implementation == CLIENT_IMPLEMENTATION:
        ports.append(("web.port", cfg.web.host, cfg.web.port))
        try:
            help_pace(cfg.web.steps_per_second, cfg.web.help_steps_per_second, cfg.web.help_timeout)
        except ValueError as error:
            raise SystemExit(str(error)) from None
    for setting, host, port in ports:
        check_port(setting, host, port)
    check_writable_dir("data_dir", Path(cfg.data_dir).absolute())  # the datastore's, and MLflow's local store
    return training


def check_port(setting: str, host: str, port) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise SystemExit(f"{setting}={port!r}: not a port number; give one from 1 to 65535 (0 picks a free one)")
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what is closing does not count
        try:
            probe.bind((host, port))
        except OSError as error:
            problem = "the port is in use" if error.errno == errno.EADDRINUSE else error.strerror
            raise SystemExit(f"{setting}={port}: cannot listen on {host}:{port} ({problem}); choose another port with {setting}=PORT") from None


def check_writable_dir(setting: str, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise SystemExit(f"{setting}={path}: cannot write there ({error.strerror}); give a writable directory with {setting}=PATH") from None


async def run_experiment(cfg: DictConfig, training, run_id: str, endpoints: Endpoints, watchers: list[Watcher], data_dir: Path) -> None:
    metrics = MetricsLogger(data_dir=data_dir, server_port=cfg.mlflow.port)
    metrics.start_run(cfg.mlflow.experiment_name, run_name=run_id, resume=bool(cfg.resume))
    context = cogment.Context(user_id="apprentice", cog_settings=cog_settings)
    try:
        run_session = await RunSession(run_id, cfg.run, endpoints, context, metrics).open()
        await while_children_live(training.impl(run_session), watchers)
    except BaseException:
        metrics.close("FAILED")
        raise
    metrics.close()


async def while_children_live(work: Coroutine, watchers: list[Watcher]) -> None:
    """Run ``work`` while watching the children: a watcher's ChildExited cancels it and is raised.

    When ``work`` fails, a child's exit is the likelier story (the services gone: every call fails),
    so a watcher that reports within CHILD_EXIT_GRACE s wins over the work's own error.
    """
    work_task = asyncio.create_task(work)
    watch_tasks = [asyncio.create_task(watch()) for watch in watchers]
    try:
        done, _ = await asyncio.wait([work_task, *watch_tasks], return_when=asyncio.FIRST_COMPLETED)
        if work_task in done:
            if work_task.exception() is None:
                return
            if watch_tasks:
                done, _ = await asyncio.wait(watch_tasks, timeout=CHILD_EXIT_GRACE)
        for task in done:
            if task is not work_task:
                task.result()  # raises the watcher's ChildExited
        error = work_task.exception()
        raise ServicesUnavailable.from_error(error) or error
    finally:
        for task in (work_task, *watch_tasks):
            task.cancel()
        await asyncio.gather(work_task, *watch_tasks, return_exceptions=True)


def stopped_run_message(error: Exception, run_id: str, cfg: DictConfig, resumable: bool) -> str:
    """What stopped, that the stored samples are safe and the command that continues (or restarts) the run."""
    overrides = [override for override in HydraConfig.get().overrides.task if not override.startswith(("run_id=", "resume="))]
    own_datastore = not cfg.services.datastore_endpoint
    where = f"data_dir={Path(cfg.data_dir).absolute()}" if own_datastore else cfg.services.datastore_endpoint
    stored = f"Run {run_id} stopped. Every sample stored so far is safe in the trial datastore ({where})"
    if not resumable:
        command = shlex.join(["python", "-m", "main", *overrides])
        return f"{error}\n{stored} (python -m apprentice.export {run_id} writes them to a file); this run cannot be resumed, start it again with:\n  {command}"
    command = shlex.join(["python", "-m", "main", *overrides, f"resume={run_id}"])
    return f"{error}\n{stored}; continue the run with:\n  {command}"


def stop_on_sigterm() -> None:
    """SIGTERM stops main like an error does, so that every ``finally`` runs and stops the children
    (by default SIGTERM kills the process at once). A second SIGTERM kills at once."""

    def stop(signum: int, _frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


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
    training = check_config(cfg)
    print(f"Run {run_id} ({cfg.run.class_name}), logs in {log_dir}", flush=True)
    try:
        with child_servers(cfg, log_dir, run_id) as (endpoints, watchers, web_url):
            asyncio.run(run_experiment(cfg, training, run_id, endpoints, watchers, data_dir))
            if web_url and cfg.web.stay_open_after_run:
                print(f"Run {run_id} finished: its summary is on the page at {web_url}. Ctrl-C to quit.", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
    except (ChildExited, ServicesUnavailable) as error:  # the children are stopped by now
        raise SystemExit(stopped_run_message(error, run_id, cfg, getattr(training, "RESUMABLE", False))) from None


if __name__ == "__main__":
    stop_on_sigterm()
    check_experiment_choice(sys.argv[1:])
    main()
