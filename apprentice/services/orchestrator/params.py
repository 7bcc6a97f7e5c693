"""Checks of TrialParams that the orchestrator can make on its own, before a trial exists.

Everything refused here is a mistake in the caller's parameters, so StartTrial answers
INVALID_ARGUMENT with a message that names the field and says how to fix it. Problems that only a
component can reveal (an unknown actor class, an unreachable endpoint) end the trial later instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from cogment.api import common_pb2

CLIENT_ENDPOINTS = ("cogment://client", "client")
DEFAULT_ENVIRONMENT_NAME = "env"
MIN_BUFFERED_TICKS = 2


class InvalidTrialParams(ValueError):
    """The message names the faulty field and the fix."""


@dataclass(frozen=True)
class Endpoint:
    """Where a component is: a gRPC target, or a client actor that will join through ClientActorSP."""

    grpc_target: str | None  # "host:port"; None for client actors

    @property
    def is_client(self) -> bool:
        return self.grpc_target is None


def parse_endpoint(url: str, field: str, allow_client: bool) -> Endpoint:
    """``grpc://host:port`` (or ``cogment://client`` where a client actor may join)."""
    lowered = url.strip().lower()
    if allow_client and lowered in CLIENT_ENDPOINTS:
        return Endpoint(None)
    if lowered.startswith("grpc://"):
        target = url.strip()[len("grpc://") :].rstrip("/")
        host, _, port = target.rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return Endpoint(target)
        raise InvalidTrialParams(f"{field} {url!r} is malformed: expected grpc://HOST:PORT, e.g. grpc://127.0.0.1:9001")
    if lowered == "" or lowered.startswith("cogment://discover"):
        raise InvalidTrialParams(
            f"{field} is {url!r}: this orchestrator has no directory service, so every endpoint must be "
            f"explicit: grpc://HOST:PORT" + (" or cogment://client for a client actor" if allow_client else "")
        )
    expected = "grpc://HOST:PORT or cogment://client" if allow_client else "grpc://HOST:PORT"
    raise InvalidTrialParams(f"{field} {url!r} is not a valid endpoint: expected {expected}")


@dataclass(frozen=True)
class CheckedParams:
    """TrialParams after validation, with the environment name defaulted and endpoints parsed."""

    params: common_pb2.TrialParams
    environment_endpoint: Endpoint
    actor_endpoints: tuple[Endpoint, ...]
    datalog_endpoint: Endpoint | None
    nb_buffered_ticks: int


def check_trial_params(params: common_pb2.TrialParams) -> CheckedParams:
    """Validate ``params`` (a copy is returned, the request is left untouched)."""
    params = common_pb2.TrialParams.FromString(params.SerializeToString())
    if not params.environment.name:
        params.environment.name = DEFAULT_ENVIRONMENT_NAME
    environment_endpoint = parse_endpoint(params.environment.endpoint, "environment.endpoint", allow_client=False)

    if not params.actors:
        raise InvalidTrialParams("actors is empty: a trial needs at least one actor in trial_params.actors")
    seen_names: set[str] = set()
    actor_endpoints = []
    for index, actor in enumerate(params.actors):
        field = f"actors[{index}]"
        if not actor.name:
            raise InvalidTrialParams(f"{field}.name is empty: give every actor a unique name")
        if not actor.actor_class:
            raise InvalidTrialParams(f"{field}.actor_class is empty: name the class of actor {actor.name!r}")
        if actor.name == params.environment.name:
            raise InvalidTrialParams(
                f"{field}.name {actor.name!r} is also the environment's name: rename the actor or the environment"
            )
        if actor.name in seen_names:
            raise InvalidTrialParams(f"{field}.name {actor.name!r} is used by two actors: actor names must be unique")
        if actor.initial_connection_timeout < 0 or actor.response_timeout < 0:
            raise InvalidTrialParams(f"{field} has a negative timeout: use 0 (no timeout) or a number of seconds")
        seen_names.add(actor.name)
        actor_endpoints.append(parse_endpoint(actor.endpoint, f"{field}.endpoint", allow_client=True))

    datalog_endpoint = None
    if params.datalog.endpoint:
        datalog_endpoint = parse_endpoint(params.datalog.endpoint, "datalog.endpoint", allow_client=False)

    return CheckedParams(
        params=params,
        environment_endpoint=environment_endpoint,
        actor_endpoints=tuple(actor_endpoints),
        datalog_endpoint=datalog_endpoint,
        nb_buffered_ticks=max(MIN_BUFFERED_TICKS, params.nb_buffered_ticks),
    )
