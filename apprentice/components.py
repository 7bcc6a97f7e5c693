"""Serve environment and actor implementations on one gRPC port.

``python -m apprentice.components --port 9001 --model-registry grpc://127.0.0.1:9000 \\
    --environment gym=environments.gym_environment.GymEnvironment \\
    --actor simple_bc=actors.simple_bc.SimpleBCActor``

Each ``NAME=CLASS`` is an implementation: ``NAME`` is what trial parameters put in
``implementation``, ``CLASS`` a dotted path. An implementation class is built once per process as
``CLASS(cfg, model_registry)`` and serves every trial through ``async impl(session)``; an actor
class also says which actor classes it plays with ``get_actor_classes()``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cogment
from prometheus_client import CollectorRegistry

from apprentice import cog_settings
from apprentice.launcher import exit_with_parent, wait_until_reachable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Implementation:
    name: str
    class_path: str
    cfg: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Implementation:
        """``NAME=module.Class`` or ``NAME=module.Class:{json config}``."""
        name, equals, rest = text.partition("=")
        if not equals or not name or not rest:
            raise ValueError(f"{text!r} is not NAME=module.Class (e.g. simple_bc=actors.simple_bc.SimpleBCActor)")
        class_path, colon, cfg_json = rest.partition(":")
        return cls(name, class_path, json.loads(cfg_json) if colon else {})

    def build(self, model_registry: Any) -> Any:
        module_name, _, class_name = self.class_path.rpartition(".")
        try:
            implementation_class = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as error:
            raise ValueError(f"implementation {self.name!r}: cannot load {self.class_path!r} ({error})") from None
        return implementation_class(self.cfg, model_registry)


async def serve_components(
    port: int,
    environments: list[Implementation],
    actors: list[Implementation],
    model_registry_endpoint: str | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve until cancelled. ``port=0`` picks a free port; ``on_ready(port)`` once it listens."""
    # Each serving Context in a process needs its own Prometheus registry (the SDK's default one
    # refuses duplicate metrics).
    context = cogment.Context(user_id="apprentice-components", cog_settings=cog_settings, prometheus_registry=CollectorRegistry())
    model_registry = None
    if model_registry_endpoint:
        model_registry = await context.get_model_registry_v2(cogment.Endpoint(model_registry_endpoint))
    for environment in environments:
        context.register_environment(impl=environment.build(model_registry).impl, impl_name=environment.name)
    for actor in actors:
        built = actor.build(model_registry)
        context.register_actor(impl=built.impl, impl_name=actor.name, actor_classes=built.get_actor_classes())

    serving = asyncio.create_task(context.serve_all_registered(cogment.ServedEndpoint(port)))
    try:
        while context.served_port == 0 and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            serving.result()  # raises the serving error
        # The SDK binds its port before it serves.
        await wait_until_reachable(f"grpc://127.0.0.1:{context.served_port}", timeout=10.0, poll_interval=0.02)
        log.info("Components served on grpc://127.0.0.1:%d", context.served_port)
        if on_ready is not None:
            on_ready(context.served_port)
        await serving
    finally:
        serving.cancel()
        # The SDK has no public way to stop its server; stop it here so that the process exits
        # quietly (an un-stopped grpc.aio server complains once the event loop is closed).
        if context._grpc_server is not None:
            await context._grpc_server.stop(grace=None)


def main() -> None:
    exit_with_parent()
    parser = argparse.ArgumentParser(prog="python -m apprentice.components", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9001, help="gRPC port (default 9001, 0 picks a free one)")
    parser.add_argument("--model-registry", default=None, help="grpc:// endpoint of the model registry")
    parser.add_argument("--environment", action="append", default=[], type=Implementation.parse, help="NAME=CLASS")
    parser.add_argument("--actor", action="append", default=[], type=Implementation.parse, help="NAME=CLASS")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        task = asyncio.current_task()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        # Callers that asked for port 0 read the real port from this line.
        await serve_components(
            args.port,
            args.environment,
            args.actor,
            args.model_registry,
            on_ready=lambda port: print(f"Components ready on grpc://127.0.0.1:{port}", flush=True),
        )

    try:
        asyncio.run(run())
    except asyncio.CancelledError:
        pass


if __name__ == "__main__":
    main()
