"""Serve environment and actor implementations on one gRPC port.

``python -m apprentice.components --port 9001 [--host 127.0.0.1] --model-registry grpc://127.0.0.1:9000 \\
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
import cogment.api.agent_pb2_grpc as agent_grpc_api
import cogment.api.environment_pb2_grpc as env_grpc_api
import grpc
from cogment.agent_service import AgentServicer
from cogment.env_service import EnvironmentServicer
from prometheus_client import CollectorRegistry

from apprentice import cog_settings
from apprentice.launcher import exit_with_parent
from apprentice.services.bad_requests import RejectBadRequests

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
    host: str = "127.0.0.1",
) -> None:
    """Serve on ``host:port`` until cancelled. ``port=0`` picks a free port; ``on_ready(port)`` once it listens."""
    # Each serving Context in a process needs its own Prometheus registry (the SDK's default one
    # refuses duplicate metrics).
    prometheus_registry = CollectorRegistry()
    context = cogment.Context(user_id="apprentice-components", cog_settings=cog_settings, prometheus_registry=prometheus_registry)
    model_registry = None
    if model_registry_endpoint:
        model_registry = await context.get_model_registry_v2(cogment.Endpoint(model_registry_endpoint))
    for environment in environments:
        context.register_environment(impl=environment.build(model_registry).impl, impl_name=environment.name)
    for actor in actors:
        built = actor.build(model_registry)
        context.register_actor(impl=built.impl, impl_name=actor.name, actor_classes=built.get_actor_classes())

    server, served_port = bind_server(context, prometheus_registry, host, port)
    await server.start()
    try:
        log.info("Components served on grpc://%s:%d", host, served_port)
        if on_ready is not None:
            on_ready(served_port)
        await server.wait_for_termination()
    finally:
        await server.stop(grace=None)


def bind_server(context: cogment.Context, prometheus_registry: CollectorRegistry, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """The gRPC server of the context's registered environments and actors, bound to ``host:port`` only.

    The SDK's ``serve_all_registered`` takes only a port and binds every interface (``[::]``), so
    the server is built here with the SDK's own servicers (cogment 2.10.1, pinned) instead.
    """
    server = grpc.aio.server(interceptors=[RejectBadRequests()])
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        served_port = server.add_insecure_port(address)
    except RuntimeError:
        served_port = 0
    if served_port == 0:
        raise OSError(f"Cannot listen on {address}: the port is in use or the address is not this machine's; choose another with --port or --host")
    if context._env_impls:
        env_grpc_api.add_EnvironmentSPServicer_to_server(EnvironmentServicer(context._env_impls, cog_settings, prometheus_registry), server)
    if context._actor_impls:
        agent_grpc_api.add_ServiceActorSPServicer_to_server(AgentServicer(context._actor_impls, cog_settings, prometheus_registry), server)
    return server, served_port


def main() -> None:
    exit_with_parent()
    parser = argparse.ArgumentParser(prog="python -m apprentice.components", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9001, help="gRPC port (default 9001, 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
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
            on_ready=lambda port: print(f"Components ready on grpc://{args.host}:{port}", flush=True),
            host=args.host,
        )

    try:
        asyncio.run(run())
    except asyncio.CancelledError:
        pass
    except OSError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
