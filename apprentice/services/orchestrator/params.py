"""Checks of TrialParams that the orchestrator can make on its own, before a trial exists.

Everything refused here is a mistake in the caller's parameters, so StartTrial answers
INVALID_ARGUMENT with a message that names the field and says how to fix it. Problems that only a
component can reveal (an unknown actor class, an unreachable endpoint) end the trial later instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cogment.api import common_pb2

CLIENT_ENDPOINTS = ("cogment://client", "client")
DEFAULT_ENVIRONMENT_NAME = "env"
MIN_BUFFERED_TICKS = 2

# Limits on what one trial may ask for. Each bounds the memory and work a single StartTrial can
# cost the services (10,000 actors cost ~225 MB), far above what a real trial needs; a request over
# a limit is refused with INVALID_ARGUMENT naming the field and the limit.
MAX_ACTORS = 1_000  # entries of trial_params.actors
MAX_NAME_CHARS = 256  # each name, actor class, implementation, endpoint and requested trial id
MAX_PROPERTIES = 100  # entries of trial_params.properties
MAX_PROPERTY_CHARS = 4_096  # each property key and value
MAX_CONFIG_BYTES = 1024 * 1024  # each serialized config or default action (trial, environment, actor)
# The whole serialized TrialParams: the datastore serves them in replies the SDK must be able to
# receive (4 MiB), and the orchestrator sends each actor its config within the same limit.
MAX_TRIAL_PARAMS_BYTES = 2 * 1024 * 1024
MAX_TIMEOUT_SECONDS = 24 * 3600.0  # initial_connection_timeout and response_timeout (0 = none)
MAX_STEPS = 100_000_000  # max_steps (0 = no limit)
MAX_INACTIVITY_SECONDS = 7 * 24 * 3600  # max_inactivity (0 = never stale)
MAX_BUFFERED_TICKS = 1_000  # nb_buffered_ticks: samples held in memory before they go to the datalog


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


def check_start_names(trial_id_requested: str, user_id: str) -> None:
    """The requested trial id and the user id become metadata, log lines and datastore keys."""
    _check_chars(trial_id_requested, "trial_id_requested")
    _check_chars(user_id, "user_id")


def check_trial_params(params: common_pb2.TrialParams) -> CheckedParams:
    """Validate ``params`` (a copy is returned, the request is left untouched)."""
    _check_limits(params)
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


def _check_limits(params: common_pb2.TrialParams) -> None:
    """Refuse, before anything is copied or allocated, what no trial needs (see the MAX_ constants)."""
    size = params.ByteSize()
    if size > MAX_TRIAL_PARAMS_BYTES:
        raise InvalidTrialParams(
            f"trial_params take {size} bytes, over the limit of {MAX_TRIAL_PARAMS_BYTES} (MAX_TRIAL_PARAMS_BYTES): "
            "make configs smaller, or pass bulky data to the components another way"
        )
    if len(params.actors) > MAX_ACTORS:
        raise InvalidTrialParams(
            f"actors has {len(params.actors)} entries, over the limit of {MAX_ACTORS} (MAX_ACTORS) per trial"
        )
    _check_config(params, "trial_config", "trial_config")
    _check_config(params.environment, "config", "environment.config")
    _check_chars(params.environment.name, "environment.name")
    _check_chars(params.environment.implementation, "environment.implementation")
    _check_chars(params.environment.endpoint, "environment.endpoint")
    _check_chars(params.datalog.endpoint, "datalog.endpoint")
    if len(params.properties) > MAX_PROPERTIES:
        raise InvalidTrialParams(
            f"properties has {len(params.properties)} entries, over the limit of {MAX_PROPERTIES} (MAX_PROPERTIES)"
        )
    for key, value in params.properties.items():
        for text in (key, value):
            if len(text) > MAX_PROPERTY_CHARS:
                raise InvalidTrialParams(
                    f"properties[{key[:40]!r}] has a key or value of {len(text)} characters, over the limit of "
                    f"{MAX_PROPERTY_CHARS} (MAX_PROPERTY_CHARS)"
                )
    _check_number(params.max_steps, "max_steps", MAX_STEPS, "steps", "0 for no limit")
    _check_number(params.max_inactivity, "max_inactivity", MAX_INACTIVITY_SECONDS, "seconds", "0 for never stale")
    if params.nb_buffered_ticks > MAX_BUFFERED_TICKS:
        raise InvalidTrialParams(
            f"nb_buffered_ticks is {params.nb_buffered_ticks}, over the limit of {MAX_BUFFERED_TICKS} "
            "(MAX_BUFFERED_TICKS): those samples are held in memory; leave it 0 for the default of 2"
        )
    for index, actor in enumerate(params.actors):
        field = f"actors[{index}]"
        for name in ("name", "actor_class", "implementation", "endpoint"):
            _check_chars(getattr(actor, name), f"{field}.{name}")
        _check_config(actor, "config", f"{field}.config")
        _check_config(actor, "default_action", f"{field}.default_action")
        for name in ("initial_connection_timeout", "response_timeout"):
            _check_number(getattr(actor, name), f"{field}.{name}", MAX_TIMEOUT_SECONDS, "seconds", "0 for no timeout")


def _check_chars(text: str, field: str) -> None:
    if len(text) > MAX_NAME_CHARS:
        raise InvalidTrialParams(
            f"{field} has {len(text)} characters, over the limit of {MAX_NAME_CHARS} (MAX_NAME_CHARS)"
        )


def _check_config(message, name: str, field: str) -> None:
    if not message.HasField(name):
        return
    size = len(getattr(message, name).content)
    if size > MAX_CONFIG_BYTES:
        raise InvalidTrialParams(
            f"{field} takes {size} bytes, over the limit of {MAX_CONFIG_BYTES} (MAX_CONFIG_BYTES): make it smaller"
        )


def _check_number(value: float, field: str, limit: float, unit: str, zero_means: str) -> None:
    """A finite number of ``unit`` between 0 and ``limit``."""
    if not math.isfinite(value) or value < 0 or value > limit:
        raise InvalidTrialParams(
            f"{field} is {_shown(value)}: it must be a number of {unit} between 0 and {_shown(limit)} ({zero_means})"
        )


def _shown(value: float) -> str:
    """4294967295 rather than 4.29497e+09; 0.5, nan, inf and 1e+30 as such."""
    return str(int(value)) if math.isfinite(value) and value == int(value) and abs(value) < 1e15 else f"{value:g}"
