"""Trial datastore: DatalogSP in (driven like the orchestrator does), TrialDatastoreSP out (real SDK).

Most tests run ``python -m apprentice.services`` as a real process (``services`` fixture, SQLite in
a temp dir). The conversion rules are checked in process, and so is ``TrialDatastore.close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import cogment
import grpc
import pytest
from cogment.api import (
    common_pb2,
    datalog_pb2,
    datalog_pb2_grpc,
    trial_datastore_pb2,
    trial_datastore_pb2_grpc,
)
from conftest import ServicesProcess, start_services_process
from google.protobuf import any_pb2, wrappers_pb2

from apprentice.services.datastore import TrialDatastore
from apprentice.services.datastore.conversion import ConversionError, SampleConverter

RUNNING = common_pb2.TrialState.RUNNING
ENDED = common_pb2.TrialState.ENDED
WAIT = 5.0  # seconds; an upper bound that only matters when something hangs

COG_SETTINGS = SimpleNamespace(
    actor_classes=cogment.ActorClassList(
        cogment.ActorClass("player", None, wrappers_pb2.BytesValue, wrappers_pb2.BytesValue),
        cogment.ActorClass("observer", None, wrappers_pb2.BytesValue, wrappers_pb2.BytesValue),
    ),
    trial=SimpleNamespace(config_type=None),
    environment=SimpleNamespace(config_type=None),
)


# -- building what the orchestrator sends ---------------------------------------------------------


def make_params(properties: dict[str, str] | None = None) -> common_pb2.TrialParams:
    """Three actors: two players (p1 'human', p2 'bot') and an observer."""
    params = common_pb2.TrialParams(
        actors=[
            common_pb2.ActorParams(name="p1", actor_class="player", implementation="human"),
            common_pb2.ActorParams(name="p2", actor_class="player", implementation="bot"),
            common_pb2.ActorParams(name="watcher", actor_class="observer", implementation="bot"),
        ],
        environment=common_pb2.EnvironmentParams(name="env"),
    )
    params.properties.update(properties or {})
    return params


def box(value: bytes) -> bytes:
    return wrappers_pb2.BytesValue(value=value).SerializeToString()


def make_sample(tick: int, state: int = RUNNING, reward: float | None = 1.0) -> datalog_pb2.DatalogSample:
    """A tick: players share observation 0, the watcher gets 1; one action each; env rewards p1."""
    sample = datalog_pb2.DatalogSample(info=datalog_pb2.SampleInfo(tick_id=tick, timestamp=1000 + tick, state=state))
    sample.observations.observations.extend([box(b"shared-%d" % tick), box(b"watch-%d" % tick)])
    sample.observations.actors_map.extend([0, 0, 1])
    for name in (b"p1", b"p2", b"watcher"):
        sample.actions.add(tick_id=tick, content=box(b"%s-act-%d" % (name, tick)))
    if reward is not None:
        sample.rewards.add(receiver_name="p1", tick_id=tick).sources.add(sender_name="env", value=reward, confidence=1)
    return sample


class DatalogWriter:
    """A RunTrialDatalog stream opened the way the orchestrator does (raw gRPC, metadata)."""

    def __init__(self, endpoint: str, trial_id: str | None, user_id: str = "alice") -> None:
        self.channel = grpc.aio.insecure_channel(endpoint.removeprefix("grpc://"))
        metadata = [("user-id", user_id)] + ([("trial-id", trial_id)] if trial_id is not None else [])
        self.call = datalog_pb2_grpc.DatalogSPStub(self.channel).RunTrialDatalog(metadata=metadata)

    async def params(self, params: common_pb2.TrialParams) -> None:
        await self.call.write(datalog_pb2.RunTrialDatalogInput(trial_params=params))

    async def sample(self, sample: datalog_pb2.DatalogSample) -> None:
        await self.call.write(datalog_pb2.RunTrialDatalogInput(sample=sample))

    async def finish(self) -> grpc.StatusCode:
        """Half-close like the orchestrator after the ENDED sample; returns the final status."""
        await self.call.done_writing()
        code = await self.call.code()
        await self.channel.close()
        return code

    async def failure(self) -> tuple[grpc.StatusCode, str]:
        """Status of a stream the service is expected to reject."""
        code, details = await self.call.code(), await self.call.details()
        await self.channel.close()
        return code, details


async def wait_for_sample_count(endpoint: str, trial_id: str, count: int, timeout: float = 10.0) -> None:
    datastore = sdk_datastore(endpoint)
    deadline = asyncio.get_running_loop().time() + timeout
    while not [info for info in await datastore.get_trials([trial_id]) if info.sample_count >= count]:
        assert asyncio.get_running_loop().time() < deadline, f"{trial_id} never had {count} samples stored"
        await asyncio.sleep(0.02)


async def log_trial(endpoint: str, trial_id: str, samples: list, params=None, user_id: str = "alice") -> None:
    writer = DatalogWriter(endpoint, trial_id, user_id)
    await writer.params(params or make_params())
    for sample in samples:
        await writer.sample(sample)
    assert await writer.finish() == grpc.StatusCode.OK


def ended_trial(ticks: int) -> list[datalog_pb2.DatalogSample]:
    return [make_sample(tick, ENDED if tick == ticks - 1 else RUNNING) for tick in range(ticks)]


def sdk_datastore(endpoint: str):
    context = cogment.Context(user_id="tester", cog_settings=COG_SETTINGS, prometheus_registry=None)
    return context.get_datastore(cogment.Endpoint(endpoint))


async def within(task: asyncio.Future, timeout: float = WAIT):
    """The task's result, failing the test if it is not done in time.

    Not ``asyncio.wait_for``: the SDK's ``all_samples`` swallows the cancellation and ends quietly,
    which ``wait_for`` would then report as a normal (partial) result.
    """
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        raise AssertionError(f"not finished after {timeout} s")
    return task.result()


async def collect(samples: AsyncIterator, timeout: float = WAIT) -> list:
    async def run() -> list:
        return [sample async for sample in samples]

    return await within(asyncio.ensure_future(run()), timeout)


def follow(samples: AsyncIterator) -> tuple[asyncio.Future, list]:
    """Read ``samples`` in the background: the list fills as they arrive; the future ends with it."""
    received: list = []

    async def run() -> list:
        async for sample in samples:
            received.append(sample)
        return received

    return asyncio.ensure_future(run()), received


async def wait_until(condition, what: str, timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not {what} after {timeout} s"
        await asyncio.sleep(0.02)


def raw_datastore(endpoint: str) -> tuple[grpc.aio.Channel, trial_datastore_pb2_grpc.TrialDatastoreSPStub]:
    channel = grpc.aio.insecure_channel(endpoint.removeprefix("grpc://"))
    return channel, trial_datastore_pb2_grpc.TrialDatastoreSPStub(channel)


@pytest.fixture
def restartable(services: ServicesProcess, tmp_path: Path) -> Iterator[SimpleNamespace]:
    """``services`` plus ``restart(sig)``: stop the process with ``sig``, start a new one on the same data."""
    state = SimpleNamespace(current=services)

    def restart(sig: int) -> ServicesProcess:
        process = state.current.process
        process.send_signal(sig)
        process.wait(timeout=15)
        state.current = start_services_process(services.data_dir, tmp_path / f"services-{time.monotonic_ns()}.log")
        return state.current

    state.restart = restart
    yield state
    if state.current is not services:
        state.current.stop()


# -- conversion rules (in process) ------------------------------------------------------------------


def test_conversion_follows_the_official_datastore_rules() -> None:
    converter = SampleConverter("trial-a", make_params())
    sample = make_sample(7, reward=None)
    sample.actions[1].content = b""  # placeholder action: still gets a payload entry
    user_data = any_pb2.Any(value=b"why")
    sample.rewards.add(receiver_name="p1").sources.extend(
        [
            common_pb2.RewardSource(sender_name="env", value=1, confidence=1),
            common_pb2.RewardSource(sender_name="p2", value=3, confidence=3, user_data=user_data),
            common_pb2.RewardSource(sender_name="p2", value=100, confidence=0),  # no weight
        ]
    )
    sample.rewards.add(receiver_name="*").sources.add(sender_name="watcher", value=2, confidence=1)
    sample.rewards.add(receiver_name="*.*").sources.add(sender_name="env", value=4, confidence=1)
    sample.rewards.add(receiver_name="player.*").sources.add(sender_name="env", value=8, confidence=1)
    sample.rewards.add(receiver_name="player.p2").sources.add(sender_name="env", value=16, confidence=1)
    sample.rewards.add(receiver_name="observer.p1").sources.add(sender_name="env", value=99, confidence=1)  # nobody
    sample.rewards.add(receiver_name="nobody").sources.add(sender_name="env", value=99, confidence=1)  # skipped
    sample.messages.add(sender_name="p1", receiver_name="p2", payload=any_pb2.Any(value=b"hi"))
    sample.messages.add(sender_name="env", receiver_name="watcher", payload=any_pb2.Any(value=b"env-says"))
    sample.messages.add(sender_name="p2", receiver_name="*", payload=any_pb2.Any(value=b"all"))

    stored = converter.convert(sample)

    assert (stored.trial_id, stored.tick_id, stored.timestamp, stored.state) == ("trial-a", 7, 1007, RUNNING)
    assert stored.user_id == ""
    p1, p2, watcher = stored.actor_samples
    assert [actor.actor for actor in stored.actor_samples] == [0, 1, 2]
    payloads = stored.payloads
    assert payloads[p1.observation] == payloads[p2.observation] == box(b"shared-7")
    assert payloads[watcher.observation] == box(b"watch-7")
    assert payloads[p1.action] == box(b"p1-act-7") and payloads[p2.action] == b""
    assert payloads[watcher.action] == box(b"watcher-act-7")

    # p1: env 1 (conf 1), p2 3 (conf 3), p2 100 (conf 0), watcher 2, env 4, env 8
    assert [(r.sender, r.reward, r.confidence) for r in p1.received_rewards] == [
        (-1, 1, 1), (1, 3, 3), (1, 100, 0), (2, 2, 1), (-1, 4, 1), (-1, 8, 1)
    ]
    assert p1.reward == pytest.approx((1 + 9 + 2 + 4 + 8) / 7)
    assert payloads[p1.received_rewards[1].user_data] == b"why"
    assert not p1.received_rewards[0].HasField("user_data")
    assert [(r.sender, r.reward) for r in p2.received_rewards] == [(2, 2), (-1, 4), (-1, 8), (-1, 16)]
    assert p2.reward == pytest.approx(30 / 4)
    assert [(r.sender, r.reward) for r in watcher.received_rewards] == [(2, 2), (-1, 4)]
    # Rewards an actor sent, with the receiver's index; the user data payload is shared.
    assert [(r.receiver, r.reward) for r in p2.sent_rewards] == [(0, 3), (0, 100)]
    assert p2.sent_rewards[0].user_data == p1.received_rewards[1].user_data
    assert [(r.receiver, r.reward) for r in watcher.sent_rewards] == [(0, 2), (1, 2), (2, 2)]

    # Messages: exact names only; the environment and wildcards are -1.
    assert [(m.sender, payloads[m.payload]) for m in p2.received_messages] == [(0, b"hi")]
    assert [(m.receiver, payloads[m.payload]) for m in p1.sent_messages] == [(1, b"hi")]
    assert [(m.sender, payloads[m.payload]) for m in watcher.received_messages] == [(-1, b"env-says")]
    assert [(m.receiver, payloads[m.payload]) for m in p2.sent_messages] == [(-1, b"all")]


def test_conversion_rejects_samples_that_do_not_fit_the_params() -> None:
    converter = SampleConverter("trial-a", make_params())
    too_many_actions = make_sample(0)
    too_many_actions.actions.add(content=b"extra")
    with pytest.raises(ConversionError, match="4 actions but the trial params list 3 actors"):
        converter.convert(too_many_actions)
    # An observation index that is out of range (unavailable actor) just leaves that actor without one.
    sample = make_sample(0)
    sample.observations.actors_map[2] = -1
    stored = converter.convert(sample)
    assert not stored.actor_samples[2].HasField("observation")
    assert stored.actor_samples[0].HasField("observation")


# -- intake and read back with the SDK ---------------------------------------------------------------


async def test_version_and_status(services: ServicesProcess) -> None:
    channel = grpc.aio.insecure_channel(services.endpoint.removeprefix("grpc://"))
    for stub in (
        datalog_pb2_grpc.DatalogSPStub(channel),
        trial_datastore_pb2_grpc.TrialDatastoreSPStub(channel),
    ):
        versions = await stub.Version(common_pb2.VersionRequest())
        assert versions.versions
        status = await stub.Status(common_pb2.StatusRequest(names=["*"]))
        assert status.statuses["overall_load"] == "0"
        assert not (await stub.Status(common_pb2.StatusRequest())).statuses
    await channel.close()


async def test_sdk_reads_back_a_logged_trial(services: ServicesProcess) -> None:
    samples = ended_trial(4)
    samples[2].rewards.add(receiver_name="player.*").sources.add(sender_name="watcher", value=5, confidence=1)
    await log_trial(services.endpoint, "trial-a", samples, make_params({"kind": "demo"}), user_id="alice")
    datastore = sdk_datastore(services.endpoint)

    [info] = await datastore.get_trials(["trial-a"])
    assert info.trial_id == "trial-a"
    assert info.trial_state == cogment.TrialState.ENDED
    assert info.user_id == "alice"
    assert info.sample_count == 4
    assert [actor.name for actor in info.parameters.actors] == ["p1", "p2", "watcher"]
    assert info.parameters.properties == {"kind": "demo"}

    read = await collect(datastore.all_samples([info]))
    assert [sample.tick_id for sample in read] == [0, 1, 2, 3]
    assert [sample.trial_state for sample in read] == [cogment.TrialState.RUNNING] * 3 + [cogment.TrialState.ENDED]
    assert read[1].timestamp == 1001
    p1, p2, watcher = (read[1].actors_data[name] for name in ("p1", "p2", "watcher"))
    assert p1.observation.value == p2.observation.value == b"shared-1"
    assert watcher.observation.value == b"watch-1"
    assert (p1.action.value, p2.action.value) == (b"p1-act-1", b"p2-act-1")
    assert (p1.reward, p2.reward) == (1.0, 0.0)
    [reward] = p1.all_received_rewards()
    assert (reward.value, reward.confidence) == (1.0, 1.0)
    # Tick 2: the watcher rewarded both players; p1 also got the env reward.
    tick2 = read[2].actors_data
    assert tick2["p1"].reward == pytest.approx(3.0) and tick2["p2"].reward == pytest.approx(5.0)
    assert sorted(r.receiver for r in tick2["watcher"].all_sent_rewards()) == ["p1", "p2"]


async def test_live_read_follows_a_running_trial_until_it_ends(services: ServicesProcess) -> None:
    writer = DatalogWriter(services.endpoint, "live")
    await writer.params(make_params())
    datastore = sdk_datastore(services.endpoint)
    [info] = await datastore.get_trials(["live"])
    assert info.sample_count == 0

    received: asyncio.Queue = asyncio.Queue()

    async def read_all() -> list[int]:
        ticks = []
        async for sample in datastore.all_samples([info]):
            ticks.append(sample.tick_id)
            received.put_nowait(sample.tick_id)
        return ticks

    reader = asyncio.create_task(read_all())
    # Lockstep: sample t+1 is only written once the reader has seen sample t, so this only
    # finishes if samples are streamed while the trial runs.
    for tick in range(5):
        await writer.sample(make_sample(tick, ENDED if tick == 4 else RUNNING))
        assert await within(asyncio.ensure_future(received.get())) == tick
        if tick == 2:
            [running] = await datastore.get_trials(["live"])
            assert (running.trial_state, running.sample_count) == (cogment.TrialState.RUNNING, 3)
    # The ENDED sample ends the read, even though the datalog stream is still open.
    assert await within(reader) == [0, 1, 2, 3, 4]
    assert await writer.finish() == grpc.StatusCode.OK


async def test_live_read_of_several_trials_ends_when_a_datalog_stream_is_cut(services: ServicesProcess) -> None:
    first, second = DatalogWriter(services.endpoint, "cut"), DatalogWriter(services.endpoint, "fine")
    await first.params(make_params())
    await second.params(make_params())
    await first.sample(make_sample(0))
    datastore = sdk_datastore(services.endpoint)
    infos = await datastore.get_trials(["cut", "fine"])
    reader, received = follow(datastore.all_samples(infos))
    await wait_until(lambda: len(received) == 1, "sample 0 of 'cut' read")
    await first.sample(make_sample(1))
    for tick in range(3):
        await second.sample(make_sample(tick, ENDED if tick == 2 else RUNNING))
    await wait_until(lambda: len(received) == 5, "all 5 samples read")
    assert not reader.done()  # "cut" is still running
    first.call.cancel()  # the orchestrator died: no ENDED sample will ever come
    await first.channel.close()
    read = await within(reader)
    assert sorted((s.trial_id, s.tick_id) for s in read) == [("cut", 0), ("cut", 1), ("fine", 0), ("fine", 1), ("fine", 2)]
    [cut] = await datastore.get_trials(["cut"])
    assert (cut.trial_state, cut.sample_count) == (cogment.TrialState.RUNNING, 2)
    assert await second.finish() == grpc.StatusCode.OK


async def test_reader_that_stops_early_does_not_disturb_the_service(services: ServicesProcess) -> None:
    writer = DatalogWriter(services.endpoint, "long")
    await writer.params(make_params())
    for tick in range(3):
        await writer.sample(make_sample(tick))
    datastore = sdk_datastore(services.endpoint)
    [info] = await datastore.get_trials(["long"])
    async for sample in datastore.all_samples([info]):
        assert sample.tick_id == 0
        break  # cancels the RetrieveSamples call
    await writer.sample(make_sample(3, ENDED))
    assert await writer.finish() == grpc.StatusCode.OK
    assert [s.tick_id for s in await collect(datastore.all_samples([info]))] == [0, 1, 2, 3]


async def test_all_trials_waits_for_new_trials_pages_filters_and_deletes(services: ServicesProcess) -> None:
    endpoint = services.endpoint
    await log_trial(endpoint, "t0", ended_trial(1), make_params({"kind": "demo"}))
    datastore = sdk_datastore(endpoint)

    async def create_later() -> None:
        for name, kind in (("t1", "other"), ("t2", "demo"), ("t3", "demo")):
            await asyncio.sleep(0.2)  # the scenario: trials come while the listing waits for them
            await log_trial(endpoint, name, ended_trial(2), make_params({"kind": kind}))

    creator = asyncio.create_task(create_later())
    started = time.monotonic()
    listed = await collect(datastore.all_trials(bundle_size=2, wait_for_trials=2))
    await creator
    # Pages [t0, t1] and [t2, t3] were answered as soon as trials created during the wait filled
    # them (~0.6 s); the third request waited its 2 s, came back empty and ended the listing.
    # Three requests that each waited their 2 s would take 6 s.
    assert [info.trial_id for info in listed] == ["t0", "t1", "t2", "t3"]
    assert 2.5 <= time.monotonic() - started < 5.5

    demos = await datastore.get_trials(properties={"kind": "demo"})
    assert [info.trial_id for info in demos] == ["t0", "t2", "t3"]
    paged = await collect(datastore.all_trials(bundle_size=2, properties={"kind": "demo"}))
    assert [info.trial_id for info in paged] == ["t0", "t2", "t3"]
    assert [info.trial_id for info in await datastore.get_trials(["t3", "nope", "t1"])] == ["t1", "t3"]

    [t2_info] = await datastore.get_trials(["t2"])
    await datastore.delete_trials(["t2", "never-existed"])
    assert [info.trial_id for info in await datastore.get_trials()] == ["t0", "t1", "t3"]
    assert await datastore.get_trials(["t2"]) == []
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await collect(datastore.all_samples([t2_info]))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'t2'" in error.value.details()
    # A new trial with a deleted id starts afresh, at the end of the creation order.
    await log_trial(endpoint, "t2", ended_trial(1))
    assert [info.trial_id for info in await datastore.get_trials()] == ["t0", "t1", "t3", "t2"]
    assert (await datastore.get_trials(["t2"]))[0].sample_count == 1


async def test_retrieve_trials_handles_count_and_timeout(services: ServicesProcess) -> None:
    for name in ("a", "b", "c"):
        await log_trial(services.endpoint, name, ended_trial(1))
    channel, stub = raw_datastore(services.endpoint)
    Request = trial_datastore_pb2.RetrieveTrialsRequest
    first = await stub.RetrieveTrials(Request(trials_count=2))
    assert [info.trial_id for info in first.trial_infos] == ["a", "b"]
    rest = await stub.RetrieveTrials(Request(trials_count=2, trial_handle=first.next_trial_handle))
    assert [info.trial_id for info in rest.trial_infos] == ["c"]
    # An id that does not exist yet: wait for it up to the timeout, then answer with what exists.
    started = time.monotonic()
    missing = await stub.RetrieveTrials(Request(trial_ids=["a", "later"], timeout=300))
    assert [info.trial_id for info in missing.trial_infos] == ["a"]
    assert time.monotonic() - started >= 0.3
    waiting = asyncio.ensure_future(stub.RetrieveTrials(Request(trial_ids=["later"], timeout=5000)))
    await asyncio.sleep(0.2)  # the scenario: the request is waiting at the service when the trial comes
    await log_trial(services.endpoint, "later", ended_trial(1))
    created = time.monotonic()
    reply = await within(waiting)
    assert time.monotonic() - created < 4.0  # woken by the creation, not by its 5 s timeout
    assert [info.trial_id for info in reply.trial_infos] == ["later"]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.RetrieveTrials(Request(trial_handle="page-two"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "next_trial_handle" in error.value.details()
    await channel.close()


async def test_sample_filters(services: ServicesProcess) -> None:
    samples = ended_trial(2)
    samples[0].messages.add(sender_name="p1", receiver_name="p2", payload=any_pb2.Any(value=b"psst"))
    await log_trial(services.endpoint, "filtered", samples)
    datastore = sdk_datastore(services.endpoint)
    [info] = await datastore.get_trials(["filtered"])

    async def actors(**filters) -> list[list[str]]:
        return [sorted(s.actors_data) for s in await collect(datastore.all_samples([info], **filters))]

    assert await actors(actor_names=["p2"]) == [["p2"], ["p2"]]
    assert await actors(actor_classes=["player"]) == [["p1", "p2"], ["p1", "p2"]]
    assert await actors(actor_implementations=["bot"]) == [["p2", "watcher"], ["p2", "watcher"]]
    assert await actors(actor_classes=["player"], actor_implementations=["bot"]) == [["p2"], ["p2"]]
    assert await actors(actor_names=["nobody"]) == [[], []]

    [first, _] = await collect(datastore.all_samples([info], fields=[cogment.DatastoreFields.ACTION]))
    p1 = first.actors_data["p1"]
    assert p1.action.value == b"p1-act-0"
    assert p1.observation is None and p1.reward == 0.0 and list(p1.all_received_rewards()) == []
    # Payloads nobody selected are emptied (the list keeps its length so indexes stay valid).
    assert sum(1 for payload in first._raw_sample.payloads if payload) == 3

    [first, _] = await collect(
        datastore.all_samples([info], actor_names=["p1"], fields=[cogment.DatastoreFields.REWARD, cogment.DatastoreFields.SENT_MESSAGES])
    )
    p1 = first.actors_data["p1"]
    assert p1.reward == 1.0 and p1.action is None
    [message] = p1.all_sent_messages()
    assert message.receiver == "p2"
    assert [payload for payload in first._raw_sample.payloads if payload] == [b"psst"]


async def test_add_trial_and_add_sample(services: ServicesProcess) -> None:
    channel, stub = raw_datastore(services.endpoint)
    await stub.AddTrial(
        trial_datastore_pb2.AddTrialRequest(user_id="importer", trial_params=make_params()),
        metadata=[("trial-id", "imported")],
    )
    converter = SampleConverter("", make_params())
    stored = [converter.convert(sample) for sample in ended_trial(3)]

    async def requests():
        for sample in stored:
            yield trial_datastore_pb2.AddSampleRequest(trial_sample=sample)

    await stub.AddSample(requests(), metadata=[("trial-id", "imported")])
    datastore = sdk_datastore(services.endpoint)
    [info] = await datastore.get_trials(["imported"])
    assert (info.user_id, info.sample_count, info.trial_state) == ("importer", 3, cogment.TrialState.ENDED)
    read = await collect(datastore.all_samples([info]))
    assert [(s.trial_id, s.tick_id) for s in read] == [("imported", 0), ("imported", 1), ("imported", 2)]
    assert read[2].actors_data["watcher"].observation.value == b"watch-2"
    await channel.close()


# -- persistence -------------------------------------------------------------------------------------


async def test_trials_survive_a_sigterm_restart(restartable: SimpleNamespace) -> None:
    endpoint = restartable.current.endpoint
    await log_trial(endpoint, "done", ended_trial(3), make_params({"kind": "demo"}), user_id="bob")
    unfinished = DatalogWriter(endpoint, "unfinished")
    await unfinished.params(make_params())
    for tick in range(4):
        await unfinished.sample(make_sample(tick))
    assert await unfinished.finish() == grpc.StatusCode.OK  # stream closed without an ENDED sample

    services = restartable.restart(signal.SIGTERM)
    assert services.process.returncode is None
    datastore = sdk_datastore(services.endpoint)
    done, unfinished_info = await datastore.get_trials()
    assert (done.trial_id, done.user_id, done.sample_count, done.trial_state) == ("done", "bob", 3, cogment.TrialState.ENDED)
    assert done.parameters.properties == {"kind": "demo"}
    assert (unfinished_info.sample_count, unfinished_info.trial_state) == (4, cogment.TrialState.RUNNING)
    read = await collect(datastore.all_samples([done, unfinished_info]))
    assert sorted((s.trial_id, s.tick_id) for s in read) == [("done", t) for t in range(3)] + [("unfinished", t) for t in range(4)]
    assert next(s for s in read if s.trial_id == "done" and s.tick_id == 2).actors_data["p1"].action.value == b"p1-act-2"
    # New trials come after the old ones.
    await log_trial(services.endpoint, "new", ended_trial(1))
    assert [info.trial_id for info in await collect(datastore.all_trials(bundle_size=2))] == ["done", "unfinished", "new"]


async def test_committed_samples_survive_a_sigkill(restartable: SimpleNamespace) -> None:
    writer = DatalogWriter(restartable.current.endpoint, "crashed")
    await writer.params(make_params())
    for tick in range(200):
        await writer.sample(make_sample(tick))
    # The count the datastore reports is that of committed samples: all 200 are on disk then.
    await wait_for_sample_count(restartable.current.endpoint, "crashed", 200)

    services = restartable.restart(signal.SIGKILL)
    writer.call.cancel()
    datastore = sdk_datastore(services.endpoint)
    [info] = await datastore.get_trials(["crashed"])
    assert (info.sample_count, info.trial_state) == (200, cogment.TrialState.RUNNING)
    # The trial can no longer receive samples: a live read returns what is stored and ends.
    read = await collect(datastore.all_samples([info]))
    assert [sample.tick_id for sample in read] == list(range(200))
    # A new datalog stream for the same id appends to it.
    await log_trial(services.endpoint, "crashed", [make_sample(200, ENDED)])
    [info] = await datastore.get_trials(["crashed"])
    assert (info.sample_count, info.trial_state) == (201, cogment.TrialState.ENDED)


async def test_every_sample_a_live_reader_got_survives_a_sigkill(restartable: SimpleNamespace) -> None:
    """What a trainer learned from is on disk: samples are committed before any reader gets them."""
    endpoint = restartable.current.endpoint
    writer = DatalogWriter(endpoint, "read-then-killed")
    await writer.params(make_params())
    datastore = sdk_datastore(endpoint)
    [info] = await datastore.get_trials(["read-then-killed"])
    received: list[int] = []
    enough = asyncio.Event()

    async def read() -> None:
        async for sample in datastore.all_samples([info]):
            received.append(sample.tick_id)
            if len(received) >= 100:
                enough.set()

    async def log_ticks() -> None:
        for tick in itertools.count():
            await writer.sample(make_sample(tick))
            await asyncio.sleep(0.002)  # the pace of a fast trial, so the reader keeps up with the writes

    reader, logger = asyncio.create_task(read()), asyncio.create_task(log_ticks())
    try:
        await within(asyncio.ensure_future(enough.wait()), timeout=30)
        got = list(received)  # no await between this and the kill: exactly what the reader had
        services = restartable.restart(signal.SIGKILL)
    finally:
        for task in (reader, logger):
            task.cancel()
        await asyncio.gather(reader, logger, return_exceptions=True)
        writer.call.cancel()
        await writer.channel.close()

    datastore = sdk_datastore(services.endpoint)
    [info] = await datastore.get_trials(["read-then-killed"])
    stored = [sample.tick_id for sample in await collect(datastore.all_samples([info]))]
    assert got == list(range(len(got)))
    missing = sorted(set(got) - set(stored))
    assert not missing, f"{len(missing)} of the {len(got)} samples the reader got are not on disk: {missing}"


# -- bad input --------------------------------------------------------------------------------------


async def test_bad_datalog_streams_get_clear_errors_and_keep_stored_samples(services: ServicesProcess) -> None:
    endpoint = services.endpoint

    writer = DatalogWriter(endpoint, trial_id=None)
    with contextlib.suppress(grpc.aio.AioRpcError):  # the call may be rejected before this write
        await writer.params(make_params())
    code, details = await writer.failure()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'trial-id' metadata" in details

    writer = DatalogWriter(endpoint, "no-params")
    with contextlib.suppress(grpc.aio.AioRpcError):  # the service may have answered already
        await writer.sample(make_sample(0))
    code, details = await writer.failure()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "first RunTrialDatalog message must carry the trial_params" in details

    writer = DatalogWriter(endpoint, "mismatch")
    await writer.params(make_params())
    await writer.sample(make_sample(0))
    bad = make_sample(1)
    bad.actions.add(content=b"fourth actor?")
    with contextlib.suppress(grpc.aio.AioRpcError):
        await writer.sample(bad)
    code, details = await writer.failure()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "4 actions but the trial params list 3 actors" in details

    writer = DatalogWriter(endpoint, "huge")
    await writer.params(make_params())
    await writer.sample(make_sample(0))
    huge = make_sample(1)
    huge.observations.observations[1] = b"x" * (4 * 1024 * 1024 + 10)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await writer.sample(huge)
    code, details = await writer.failure()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "4 MiB" in details and "tick 1" in details

    # Over the server's receive limit: gRPC refuses it before the datastore sees it.
    writer = DatalogWriter(endpoint, "huger")
    await writer.params(make_params())
    await writer.sample(make_sample(0))
    # gRPC kills the whole stream, with whatever the service had not read yet: wait until sample 0
    # is stored, the case this test is about.
    await wait_for_sample_count(endpoint, "huger", 1)
    huger = make_sample(1)
    huger.observations.observations[1] = b"x" * (17 * 1024 * 1024)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await writer.sample(huger)
    code, _ = await writer.failure()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Bytes that are not a protobuf message at all.
    channel = grpc.aio.insecure_channel(endpoint.removeprefix("grpc://"))
    garbage = channel.stream_stream("/cogmentAPI.DatalogSP/RunTrialDatalog")(metadata=[("trial-id", "garbage")])
    await garbage.write(b"\xff\xff\xff\xff\x0f")
    await garbage.done_writing()
    assert await garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid cogmentAPI.RunTrialDatalogInput" in await garbage.details()
    await channel.close()

    # The service is still up and kept every sample that came before a bad one.
    datastore = sdk_datastore(endpoint)
    counts = {info.trial_id: info.sample_count for info in await datastore.get_trials()}
    assert counts == {"mismatch": 1, "huge": 1, "huger": 1}
    [huge_info] = await datastore.get_trials(["huge"])
    assert [s.tick_id for s in await collect(datastore.all_samples([huge_info]))] == [0]


async def test_bad_datastore_requests_get_clear_errors(services: ServicesProcess) -> None:
    channel, stub = raw_datastore(services.endpoint)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await collect(stub.RetrieveSamples(trial_datastore_pb2.RetrieveSamplesRequest(trial_ids=["ghost"])))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "'ghost'" in error.value.details()
    # No trial ids: nothing, at once.
    assert await collect(stub.RetrieveSamples(trial_datastore_pb2.RetrieveSamplesRequest())) == []

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.AddTrial(trial_datastore_pb2.AddTrialRequest(trial_params=make_params()))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'trial-id'" in error.value.details()

    async def one_sample(trial_id: str = ""):
        yield trial_datastore_pb2.AddSampleRequest(trial_sample=trial_datastore_pb2.StoredTrialSample(trial_id=trial_id))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.AddSample(one_sample(), metadata=[("trial-id", "ghost")])
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "AddTrial" in error.value.details()

    await stub.AddTrial(trial_datastore_pb2.AddTrialRequest(trial_params=make_params()), metadata=[("trial-id", "real")])
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.AddSample(one_sample("other"), metadata=[("trial-id", "real")])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'other'" in error.value.details()
    await channel.close()


# -- shutdown (in process) -------------------------------------------------------------------------


async def test_close_ends_live_readers_and_flushes(tmp_path: Path) -> None:
    async def serve(datastore: TrialDatastore) -> tuple[grpc.aio.Server, str]:
        server = grpc.aio.server()
        datastore.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, f"grpc://127.0.0.1:{port}"

    for data_dir in (None, tmp_path):
        datastore = TrialDatastore.create(data_dir)
        server, endpoint = await serve(datastore)
        writer = DatalogWriter(endpoint, "open")
        await writer.params(make_params())
        await writer.sample(make_sample(0))
        sdk = sdk_datastore(endpoint)
        [info] = await sdk.get_trials(["open"])
        reader, received = follow(sdk.all_samples([info]))
        await wait_until(lambda received=received: received, "sample 0 read")
        assert not reader.done()  # waiting for more: the trial is still open
        await datastore.close()
        # The SDK sees UNAVAILABLE ("communication lost") and ends the loop without raising.
        assert [s.tick_id for s in await within(reader)] == [0]
        writer.call.cancel()
        await server.stop(None)
        await writer.channel.close()

    # What the SQLite datastore had was on disk when close() returned.
    reopened = TrialDatastore.create(tmp_path)
    server, endpoint = await serve(reopened)
    [info] = await sdk_datastore(endpoint).get_trials(["open"])
    assert info.sample_count == 1
    await server.stop(None)
    await reopened.close()
