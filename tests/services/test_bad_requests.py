"""Requests an attacker or a buggy client may send: each gets a clear INVALID_ARGUMENT, costs the
services nothing that lasts, and leaves at most one log line per kind of problem.

Against ``python -m apprentice.services`` as a real process (``services`` fixture), except the
clean-up of failed trials, which looks inside an in-process orchestrator.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
import weakref
from pathlib import Path

import grpc
import psutil
import pytest
from cogment.api import (
    common_pb2,
    model_registry_pb2,
    model_registry_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    trial_datastore_pb2,
    trial_datastore_pb2_grpc,
)
from conftest import ServicesProcess

from apprentice.launcher import free_port, start_python
from apprentice.services.bad_requests import RateLimitedLog
from apprentice.services.orchestrator import Orchestrator
from apprentice.services.orchestrator.params import MAX_ACTORS, MAX_TIMEOUT_SECONDS
from apprentice.services.server import start_services

NOT_A_MESSAGE = b"\xff\xff\xff\xff\x0f"  # a field tag with an invalid wire type: no message parses it
TrialState = common_pb2.TrialState


def channel_to(services: ServicesProcess) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{services.port}")


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    """Code and details of a call (awaitable, or a response stream read to its end)."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def params_with(actors: int = 1, **fields) -> common_pb2.TrialParams:
    """Valid params (nobody answers at the environment's endpoint) with client actors a0, a1..."""
    params = common_pb2.TrialParams(environment=common_pb2.EnvironmentParams(endpoint=f"grpc://127.0.0.1:{free_port()}"))
    for index in range(actors):
        params.actors.add(name=f"a{index}", actor_class="player", endpoint="cogment://client")
    for name, value in fields.items():
        setattr(params, name, value)
    return params


async def start(stub, params: common_pb2.TrialParams, trial_id: str = "", user_id: str = "tester"):
    return await status_of(
        stub.StartTrial(orchestrator_pb2.TrialStartRequest(params=params, trial_id_requested=trial_id, user_id=user_id))
    )


async def wait_for_state(stub, trial_id: str, states: set[int], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        reply = await stub.GetTrialInfo(orchestrator_pb2.TrialInfoRequest(), metadata=[("trial-id", trial_id)])
        state = reply.trial[0].state if reply.trial else TrialState.ENDED  # forgotten: long over
        if state in states:
            return state
        assert time.monotonic() < deadline, f"trial {trial_id} still {TrialState.Name(state)} after {timeout} s"
        await asyncio.sleep(0.05)


# -- undecodable requests ----------------------------------------------------------------------------


async def test_undecodable_requests_get_invalid_argument_and_one_log_line(services: ServicesProcess, tmp_path: Path) -> None:
    async def requests():
        yield NOT_A_MESSAGE

    channel = channel_to(services)
    calls = {  # one method of each kind (unary/stream request, unary/stream reply)
        "/cogmentAPI.TrialLifecycleSP/StartTrial": ("TrialStartRequest", lambda m: channel.unary_unary(m)(NOT_A_MESSAGE)),
        "/cogmentAPI.TrialDatastoreSP/RetrieveSamples": (
            "RetrieveSamplesRequest",
            lambda m: channel.unary_stream(m)(NOT_A_MESSAGE),
        ),
        "/cogmentAPI.ModelRegistrySP/CreateVersion": (
            "CreateVersionRequestChunk",
            lambda m: channel.stream_unary(m)(requests()),
        ),
        "/cogmentAPI.DatalogSP/RunTrialDatalog": (
            "RunTrialDatalogInput",
            lambda m: channel.stream_stream(m)(requests(), metadata=[("trial-id", "garbage")]),
        ),
        "/cogmentAPI.ClientActorSP/RunTrial": (
            "ActorRunTrialOutput",
            lambda m: channel.stream_stream(m)(requests(), metadata=[("trial-id", "garbage")]),
        ),
    }
    for method, (message_type, call) in calls.items():
        for _ in range(30):
            code, details = await status_of(call(method))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {code} {details}"
            assert f"not a valid cogmentAPI.{message_type}" in details, details
    # The services are still fine.
    version = orchestrator_pb2_grpc.TrialLifecycleSPStub(channel).Version(common_pb2.VersionRequest())
    assert (await version).versions
    await channel.close()

    log = (tmp_path / "services.log").read_text()
    assert "Traceback" not in log
    for method in calls:
        assert log.count(f"Refused a call of {method}") <= 1, log
    assert log.count("Refused a call of /cogmentAPI.TrialLifecycleSP/StartTrial") == 1, log


async def test_the_components_refuse_bad_requests_with_invalid_argument_and_one_log_line(tmp_path: Path) -> None:
    """The SDK's environment and actor servicers behind ``python -m apprentice.components``: garbage
    and a RunTrial without its trial id got UNKNOWN and a traceback per call before."""
    log_path = tmp_path / "components.log"
    arguments = ["--port", "0", "--environment", "gym=environments.gym_environment.GymEnvironment",
                 "--actor", "simple_bc=actors.simple_bc.SimpleBCActor"]  # fmt: skip
    components = start_python("components", ["-m", "apprentice.components", *arguments], log_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{components.port}") as channel:

            async def requests():
                yield NOT_A_MESSAGE

            for service in ("EnvironmentSP", "ServiceActorSP"):
                for _ in range(20):
                    code, details = await status_of(channel.unary_unary(f"/cogmentAPI.{service}/Version")(NOT_A_MESSAGE))
                    assert code == grpc.StatusCode.INVALID_ARGUMENT, (service, code, details)
                    code, details = await status_of(channel.stream_stream(f"/cogmentAPI.{service}/RunTrial")(requests()))
                    assert code == grpc.StatusCode.INVALID_ARGUMENT, (service, code, details)
                    assert "'trial-id' metadata" in details, details
            version = await channel.unary_unary("/cogmentAPI.EnvironmentSP/Version")(common_pb2.VersionRequest().SerializeToString())
            assert version  # still serving
    finally:
        components.stop()
    log = log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("Refused a call of") == 4, log  # a line per method and kind of error


def test_rate_limited_log_counts_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.rate"), interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        for second in range(50):
            now[0] = float(second)
            limited.warning("bad-a", "bad a")
            limited.warning("bad-b", "bad b")
        now[0] = 61.0
        limited.warning("bad-a", "bad a again")
    assert caplog.messages == [
        "bad a",
        "bad b",
        "bad a again (49 more like it since the last such line, not logged)",
    ]


# -- paging handles ----------------------------------------------------------------------------------


async def test_paging_handles_that_are_not_ours_are_invalid_arguments(services: ServicesProcess) -> None:
    channel = channel_to(services)
    datastore = trial_datastore_pb2_grpc.TrialDatastoreSPStub(channel)
    registry = model_registry_pb2_grpc.ModelRegistrySPStub(channel)
    await registry.CreateOrUpdateModel(
        model_registry_pb2.CreateOrUpdateModelRequest(model_info=model_registry_pb2.ModelInfo(model_id="m"))
    )
    calls = {
        "trial_handle": lambda handle: datastore.RetrieveTrials(trial_datastore_pb2.RetrieveTrialsRequest(trial_handle=handle)),
        "model_handle": lambda handle: registry.RetrieveModels(model_registry_pb2.RetrieveModelsRequest(model_handle=handle)),
        "version_handle": lambda handle: registry.RetrieveVersionInfos(
            model_registry_pb2.RetrieveVersionInfosRequest(model_id="m", version_handle=handle)
        ),
    }
    # Over Python's int-conversion limit, a digit int() refuses, past int64, negative, not a number.
    for handle in ("9" * 5000, "²", "1" * 19, "-1", "page2"):
        for field, call in calls.items():
            code, details = await status_of(call(handle))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{field}={handle[:20]!r}: {code} {details}"
            assert field in details and len(details) < 400, details
    for call in calls.values():  # handles the services wrote still work
        assert await status_of(call("0")) == (grpc.StatusCode.OK, "")
    await channel.close()


# -- what a trial may ask for -------------------------------------------------------------------------


def refused_params() -> dict[str, tuple[common_pb2.TrialParams, list[str]]]:
    """Case -> (params, words the message must contain: the field and the limit)."""
    cases: dict[str, tuple[common_pb2.TrialParams, list[str]]] = {
        "too many actors": (params_with(MAX_ACTORS + 1), ["actors", str(MAX_ACTORS)]),
        "max_steps": (params_with(max_steps=2**32 - 1), ["max_steps", "100000000"]),
        "max_inactivity": (params_with(max_inactivity=2**32 - 1), ["max_inactivity"]),
        "nb_buffered_ticks": (params_with(nb_buffered_ticks=10**12), ["nb_buffered_ticks", "1000"]),
    }
    for name, value in (("nan", math.nan), ("inf", math.inf), ("negative", -1.0), ("huge", 1e30)):
        params = params_with(2)
        params.actors[1].initial_connection_timeout = value
        cases[f"{name} initial_connection_timeout"] = (params, ["actors[1].initial_connection_timeout", "86400"])
        params = params_with(1)
        params.actors[0].response_timeout = value
        cases[f"{name} response_timeout"] = (params, ["actors[0].response_timeout"])
    params = params_with()
    params.actors[0].config.content = b"x" * (1024 * 1024 + 1)
    cases["actor config"] = (params, ["actors[0].config", str(1024 * 1024)])
    params = params_with()
    params.environment.config.content = b"x" * (1024 * 1024 + 1)
    cases["environment config"] = (params, ["environment.config"])
    params = params_with(3)
    for actor in params.actors:
        actor.config.content = b"x" * (1024 * 1024 - 100)
    cases["whole params"] = (params, ["trial_params", str(2 * 1024 * 1024)])
    params = params_with()
    params.properties.update({f"key{index}": "v" for index in range(101)})
    cases["properties"] = (params, ["properties", "100"])
    params = params_with()
    params.properties["big"] = "v" * 5000
    cases["property value"] = (params, ["properties['big']", "4096"])
    params = params_with()
    params.actors[0].name = "n" * 300
    cases["actor name"] = (params, ["actors[0].name", "256"])
    return cases


async def test_start_trial_refuses_what_no_trial_needs(services: ServicesProcess) -> None:
    channel = channel_to(services)
    stub = orchestrator_pb2_grpc.TrialLifecycleSPStub(channel)
    for case, (params, words) in refused_params().items():
        code, details = await start(stub, params)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{case}: {code} {details}"
        assert all(word in details for word in words), f"{case}: {details!r} should name {words}"
    for field, kwargs in (("trial_id_requested", {"trial_id": "t" * 300}), ("user_id", {"user_id": "u" * 300})):
        code, details = await start(stub, params_with(), **kwargs)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, details
    # Nothing was started.
    assert not (await stub.GetTrialInfo(orchestrator_pb2.TrialInfoRequest())).trial
    await channel.close()


async def test_refused_start_trials_do_not_grow_memory(services: ServicesProcess) -> None:
    channel = channel_to(services)
    stub = orchestrator_pb2_grpc.TrialLifecycleSPStub(channel)
    big = params_with(MAX_ACTORS + 1)  # ~1 MB each: refused for its number of actors
    for actor in big.actors:
        actor.config.content = b"c" * 1000
    nan = params_with(MAX_ACTORS)
    nan.actors[-1].response_timeout = math.nan
    process = psutil.Process(services.process.pid)

    async def refuse(count: int) -> None:
        for _ in range(count):
            for params in (big, nan):
                code, details = await start(stub, params)
                assert code == grpc.StatusCode.INVALID_ARGUMENT, details

    await refuse(10)  # warm-up: gRPC's buffers and the allocator's arenas
    before = process.memory_info().rss
    await refuse(100)  # ~200 MB of requests
    grown = process.memory_info().rss - before
    assert grown < 30 * 1024 * 1024, f"RSS grew {grown / 2**20:.0f} MiB over 200 refused StartTrials"
    assert not (await stub.GetTrialInfo(orchestrator_pb2.TrialInfoRequest())).trial
    await channel.close()


async def test_pending_trial_ends_within_its_connection_timeout_and_zero_waits(services: ServicesProcess) -> None:
    channel = channel_to(services)
    stub = orchestrator_pb2_grpc.TrialLifecycleSPStub(channel)
    forever = params_with(1)  # initial_connection_timeout 0: wait for the client forever (the teacher's page)
    assert await start(stub, forever, "waits-forever") == (grpc.StatusCode.OK, "")
    crowded = params_with(MAX_ACTORS)  # the most actors a trial may have, none of which ever joins
    for actor in crowded.actors:
        actor.initial_connection_timeout = 0.5
    crowded.actors[0].response_timeout = MAX_TIMEOUT_SECONDS  # the limits themselves are accepted
    started = time.monotonic()
    assert await start(stub, crowded, "nobody-joins") == (grpc.StatusCode.OK, "")
    await wait_for_state(stub, "nobody-joins", {TrialState.ENDED}, timeout=10)
    assert time.monotonic() - started < 8
    # The other trial, started earlier, is still waiting for its client.
    assert await wait_for_state(stub, "waits-forever", {TrialState.PENDING}, timeout=1) == TrialState.PENDING
    await stub.TerminateTrial(orchestrator_pb2.TerminateTrialRequest(hard_termination=True), metadata=[("trial-id", "waits-forever")])
    await channel.close()


# -- failed trials (in process) -----------------------------------------------------------------------


async def test_failed_trials_leave_nothing_behind() -> None:
    """Trials that fail (an unreachable actor, actors that never join) free their objects and channels."""
    services = await start_services(port=0)
    orchestrator: Orchestrator = services.orchestrator
    orchestrator.ended_trial_retention = 0.2
    orchestrator.channel_idle_seconds = 0.2
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{services.port}")
    stub = orchestrator_pb2_grpc.TrialLifecycleSPStub(channel)
    trials: list[weakref.ref] = []
    try:
        for number in range(10):
            params = params_with(100)
            for actor in params.actors:
                actor.initial_connection_timeout = 0.1
            params.actors[0].endpoint = f"grpc://127.0.0.1:{free_port()}"  # a service actor nobody serves
            assert await start(stub, params, f"failing-{number}") == (grpc.StatusCode.OK, "")
            trials.append(weakref.ref(orchestrator.trials[f"failing-{number}"]))
        # Ended, forgotten after their retention, streams finished: nothing may keep them alive.
        deadline = time.monotonic() + 15
        while True:
            gc.collect()
            alive = sum(trial() is not None for trial in trials)
            if not alive and not orchestrator.open_channels:
                break
            assert time.monotonic() < deadline, f"{alive} trials alive, {orchestrator.open_channels} channels open"
            await asyncio.sleep(0.1)
    finally:
        await channel.close()
        await services.stop()
