"""All Apprentice Cogment services on one gRPC port.

``grpc://HOST:PORT`` is then at once the orchestrator (TrialLifecycleSP, ClientActorSP), the trial
datastore and datalog (TrialDatastoreSP, DatalogSP) and the model registry (ModelRegistrySP).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from apprentice.services.bad_requests import RejectBadRequests
from apprentice.services.common import server_options
from apprentice.services.datastore import TrialDatastore
from apprentice.services.model_registry import ModelRegistry
from apprentice.services.orchestrator import Orchestrator

log = logging.getLogger(__name__)


@dataclass
class RunningServices:
    """The services behind one port; ``stop()`` ends trials, flushes data and closes the port."""

    server: grpc.aio.Server
    port: int
    orchestrator: Orchestrator
    datastore: TrialDatastore
    model_registry: ModelRegistry

    @property
    def endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    async def stop(self, grace: float = 2.0) -> None:
        # Trials first: their last samples go to the datastore, which is still serving. Then the
        # long-lived streams (live sample reads, version watches) end at once instead of holding
        # the server for its whole grace period.
        await self.orchestrator.close()
        await self.model_registry.close()
        await self.datastore.close()
        await self.server.stop(grace)


async def start_services(
    port: int = 9000,
    data_dir: Path | None = None,
    host: str = "127.0.0.1",
) -> RunningServices:
    """Start every service on ``host:port``.

    With ``data_dir`` the datastore (SQLite) and the archived model versions persist there; without
    it everything lives in memory, which suits tests. ``port=0`` picks a free port.
    """
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
    server = grpc.aio.server(options=list(server_options()), interceptors=[RejectBadRequests()])
    try:
        bound_port = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpc raises when the address cannot be bound
        bound_port = 0
    if bound_port == 0:
        raise OSError(f"Cannot listen on {host}:{port}: the port is in use. Choose another one with --port.")
    datastore = TrialDatastore.create(data_dir)
    model_registry = ModelRegistry.create(data_dir)
    orchestrator = Orchestrator()
    datastore.add_to_server(server)
    model_registry.add_to_server(server)
    orchestrator.add_to_server(server)
    await server.start()
    log.info("Cogment services listening on grpc://%s:%d", host, bound_port)
    return RunningServices(server, bound_port, orchestrator, datastore, model_registry)
