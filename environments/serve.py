"""Serve the application's Cogment components on one gRPC port.

``python -m environments --port 9001`` serves, on ``grpc://HOST:9001``:

* environment implementation ``gym`` (``environments.gym_environment``),
* actor implementation ``mlp_policy`` of class ``player`` (``actors.mlp_policy``),
* actor implementation ``scripted_teacher`` of class ``teacher`` (``actors.scripted_teacher``).

Trial parameters then point the environment and both actors at that endpoint and pick the
implementation by name. One process for all of them keeps a 2-core machine free for the
orchestrator; nothing prevents starting several such processes on different ports.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable

import cogment
from prometheus_client import CollectorRegistry

from actors import mlp_policy, scripted_teacher
from apprentice import cog_settings
from environments import gym_environment

log = logging.getLogger(__name__)


def register_components(context: cogment.Context) -> None:
    """Register the environment and both actor implementations on ``context``."""
    context.register_environment(impl=gym_environment.impl, impl_name=gym_environment.IMPLEMENTATION_NAME)
    context.register_actor(
        impl=mlp_policy.impl,
        impl_name=mlp_policy.IMPLEMENTATION_NAME,
        actor_classes=[cog_settings.PLAYER_ACTOR_CLASS],
    )
    context.register_actor(
        impl=scripted_teacher.impl,
        impl_name=scripted_teacher.IMPLEMENTATION_NAME,
        actor_classes=[cog_settings.TEACHER_ACTOR_CLASS],
    )


async def _wait_until_listening(port: int, timeout: float = 10.0) -> None:
    """The SDK binds the port before it starts serving; wait until connections are accepted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def serve_components(
    port: int = 0,
    on_ready: Callable[[int], None] | None = None,
    register: Callable[[cogment.Context], None] = register_components,
    prometheus_registry: CollectorRegistry | None = None,
) -> None:
    """Serve until cancelled. ``port=0`` picks a free port; ``on_ready(port)`` is called once listening.

    ``register`` puts the implementations on the context (tests add their own actors this way).
    Each serving ``cogment.Context`` in a process needs its own Prometheus registry (the SDK's
    default one refuses duplicate metrics), hence a fresh one when none is given.
    """
    context = cogment.Context(
        user_id="apprentice-components",
        cog_settings=cog_settings,
        prometheus_registry=prometheus_registry or CollectorRegistry(),
    )
    register(context)
    serving = asyncio.create_task(context.serve_all_registered(cogment.ServedEndpoint(port)))
    try:
        while context.served_port == 0 and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            serving.result()  # raises the serving error
        await _wait_until_listening(context.served_port)
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
    parser = argparse.ArgumentParser(prog="python -m environments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9001, help="gRPC port (default 9001, 0 picks a free one)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        task = asyncio.current_task()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        # Scripts that asked for port 0 read the real port from this line.
        await serve_components(
            args.port, on_ready=lambda port: print(f"Components ready on grpc://127.0.0.1:{port}", flush=True)
        )

    try:
        asyncio.run(run())
    except asyncio.CancelledError:
        pass
