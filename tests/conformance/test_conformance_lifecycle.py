"""Orchestrator conformance: trial lifecycle seen through the unmodified SDK.

Scenarios of ``/work/shared/docs/cogment-protocol.md`` §10: 1 (Version/Status), 2 (env ends itself),
3 (max_steps), 4 (soft terminate), 5 (hard terminate), 16 (GetTrialInfo), 17 (duplicate trial id),
25 (throughput), plus WatchTrials states, bad StartTrial input, max_inactivity and parallel trials.
"""

from __future__ import annotations

import asyncio
import time

import cogment
import grpc
import pytest
from cogment.api import common_pb2, orchestrator_pb2

from conformance.harness import (
    action_set_events,
    actor,
    assert_consecutive,
    free_port,
    lifecycle_stub,
    loop_end,
    observation_events,
    select,
    summary,
    trial_params,
    wait_until,
)
from conformance.scripted import observation_value

pytestmark = pytest.mark.timeout(90)


def two_service_actors(endpoint: str, **configs) -> list[cogment.ActorParameters]:
    return [
        actor("p1", "player", endpoint, config=configs.get("p1", {})),
        actor("p2", "spectator", endpoint, config=configs.get("p2", {})),
    ]


def all_loops_ended(trial_id: str, names=("p1", "p2"), env: bool = True):
    def predicate(records):
        return (not env or loop_end(records, trial_id, "env")) and all(
            loop_end(records, trial_id, "actor", name) for name in names)
    return predicate


def forced_end_lines(log: str, trial_id: str) -> list[str]:
    """SDK warnings logged when END arrives without LAST (hard end), with the END details."""
    return [line for line in log.splitlines() if f"Trial [{trial_id}]" in line and "ended forcefully" in line]


# ----------------------------------------------------------------------------------------- 1


async def test_version_and_status(sdk, services):
    """§10 #1: get_remote_versions() is a non-empty dict; Status(["*"]) returns overall_load."""
    versions = await asyncio.wait_for(sdk.controller.get_remote_versions(), 5)
    assert isinstance(versions, dict) and versions, f"empty versions: {versions!r}"

    channel, stub = lifecycle_stub(services.endpoint)
    async with channel:
        status = await asyncio.wait_for(stub.Status(common_pb2.StatusRequest(names=["*"])), 5)
        assert "overall_load" in status.statuses, dict(status.statuses)
        empty = await asyncio.wait_for(stub.Status(common_pb2.StatusRequest()), 5)
        assert dict(empty.statuses) == {}, "Status with no names must return an empty map (§1.5)"


# ----------------------------------------------------------------------------------------- 2


async def test_env_ends_itself_after_100_action_sets(sdk, components):
    """§10 #2: env + 2 service actors, the env ends the trial after 100 action sets."""
    comp = await components()
    await sdk.watcher_subscribed(comp.endpoint)
    params = trial_params(comp.endpoint, two_service_actors(comp.endpoint),
                          env_config={"end_after": 100, "start_delay": 0.3})
    trial_id = await sdk.start_trial(params, "sc2-env-ends-itself")
    assert trial_id == "sc2-env-ends-itself"

    await sdk.wait_state(trial_id, "ENDED", 30, lambda: comp.records)
    records = await comp.wait_for(all_loops_ended(trial_id), 5, "env and actors event loops to end", trial_id)

    env_init = select(records, trial=trial_id, role="env", kind="init")
    assert len(env_init) == 1 and env_init[0]["name"] == "env", env_init
    assert env_init[0]["impl"] == "scripted", "EnvironmentParams.implementation must reach the env (impl_name)"
    assert env_init[0]["config"] == {"end_after": 100, "start_delay": 0.3}, "environment config"
    assert env_init[0]["actors"] == [["p1", "player"], ["p2", "spectator"]], "actors_in_trial in param order"
    for index, name in enumerate(["p1", "p2"]):
        init = select(records, trial=trial_id, role="actor", name=name, kind="init")
        assert len(init) == 1 and init[0]["env_name"] == "env", init
        assert init[0]["impl"] == "scripted", "ActorParams.implementation must reach the actor (impl_name)"
        assert init[0]["config"] == {}, "actor config"
        observations = observation_events(records, trial_id, name)
        assert_consecutive([entry["obs"]["tick"] for entry in observations], 0, 100, f"{name} observations")
        assert [entry["type"] for entry in observations] == ["ACTIVE"] * 100 + ["ENDING"], \
            f"{name}: expected 100 ACTIVE observations then 1 ENDING"
        assert [entry["obs"]["value"] for entry in observations] == [observation_value(tick, index)
                                                                     for tick in range(101)], \
            f"{name} received another actor's observation (actors_map)"
        actor_events = [entry for entry in records if entry.get("trial") == trial_id
                        and entry.get("name") == name and entry["kind"] == "event"]
        assert actor_events[-1]["type"] == "FINAL", f"{name}: last event {actor_events[-1]}"
        assert loop_end(records, trial_id, "actor", name)["final"] is True

    action_sets = action_set_events(records, trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, 99, "env action sets")
    for entry in action_sets:
        tick = entry["actions"][0]["tick"]
        assert [(action["index"], action["tick"], action["status"], action["value"]) for action in entry["actions"]] \
            == [(index, tick, "ACTIVE", observation_value(tick, index) + 1) for index in range(2)], entry
        assert entry["type"] == "ACTIVE"
    assert loop_end(records, trial_id, "env")["final"] is True

    states = [state for state in sdk.watcher.states(trial_id) if state != "INITIALIZING"]
    assert states == ["PENDING", "RUNNING", "TERMINATING", "ENDED"], f"watch_trials saw {states}"


# ----------------------------------------------------------------------------------------- 3


async def test_max_steps_10(sdk, components):
    """§10 #3: max_steps = 10, env never ends: 11 action sets (last one ENDING), final observation 11."""
    comp = await components()
    params = trial_params(comp.endpoint, two_service_actors(comp.endpoint), max_steps=10)
    trial_id = await sdk.start_trial(params, "sc3-max-steps")
    await sdk.wait_state(trial_id, "ENDED", 20, lambda: comp.records)
    records = await comp.wait_for(all_loops_ended(trial_id), 5, "event loops to end", trial_id)

    action_sets = action_set_events(records, trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, 10, "env action sets")
    assert [entry["type"] for entry in action_sets] == ["ACTIVE"] * 10 + ["ENDING"], \
        "the 11th action set (tick 10) must come after LAST (ENDING event)"
    for name in ("p1", "p2"):
        observations = observation_events(records, trial_id, name)
        assert_consecutive([entry["obs"]["tick"] for entry in observations], 0, 11, f"{name} observations")
        assert observations[-1]["type"] == "ENDING"
        assert loop_end(records, trial_id, "actor", name)["final"] is True, f"{name} got no FINAL"
    assert loop_end(records, trial_id, "env")["final"] is True


# ----------------------------------------------------------------------------------------- 4


async def test_soft_terminate_while_running(sdk, components):
    """§10 #4: terminate_trial([id]) -> one ENDING action set, final observations, FINAL everywhere."""
    comp = await components()
    params = trial_params(comp.endpoint, two_service_actors(comp.endpoint), env_config={"obs_delay": 0.01})
    trial_id = await sdk.start_trial(params, "sc4-soft-terminate")
    await comp.wait_for(lambda recs: len(action_set_events(recs, trial_id)) >= 5, 15,
                        "5 action sets before terminating", trial_id)
    await asyncio.wait_for(sdk.controller.terminate_trial([trial_id]), 5)
    await sdk.wait_state(trial_id, "ENDED", 10, lambda: comp.records)
    records = await comp.wait_for(all_loops_ended(trial_id), 5, "event loops to end", trial_id)

    action_sets = action_set_events(records, trial_id)
    ticks = [entry["actions"][0]["tick"] for entry in action_sets]
    assert_consecutive(ticks, 0, ticks[-1], "env action sets")
    types = [entry["type"] for entry in action_sets]
    assert types.count("ENDING") == 1 and types[-1] == "ENDING", \
        f"expected exactly one ENDING action set, the last one; got {types[-5:]}"
    last_tick = ticks[-1]
    for name in ("p1", "p2"):
        observations = observation_events(records, trial_id, name)
        assert_consecutive([entry["obs"]["tick"] for entry in observations], 0, last_tick + 1,
                           f"{name} observations")
        assert observations[-1]["type"] == "ENDING"
        assert loop_end(records, trial_id, "actor", name)["final"] is True, f"{name} got no FINAL"
    assert loop_end(records, trial_id, "env")["final"] is True
    states = sdk.watcher.states(trial_id)
    assert "TERMINATING" in states and states[-1] == "ENDED", states


# ----------------------------------------------------------------------------------------- 5


async def test_hard_terminate_while_running(sdk, components):
    """§10 #5: hard=True -> END "Externally requested" everywhere, no FINAL, ENDED within 1 s."""
    comp = await components()
    params = trial_params(comp.endpoint, two_service_actors(comp.endpoint), env_config={"obs_delay": 0.01})
    trial_id = await sdk.start_trial(params, "sc5-hard-terminate")
    await comp.wait_for(lambda recs: len(action_set_events(recs, trial_id)) >= 5, 15,
                        "5 action sets before terminating", trial_id)
    requested = time.monotonic()
    await asyncio.wait_for(sdk.controller.terminate_trial([trial_id], hard=True), 5)
    ended = await sdk.wait_state(trial_id, "ENDED", 5, lambda: comp.records)
    assert ended - requested <= 1.0, f"ENDED seen {ended - requested:.2f} s after the hard terminate request"

    records = await comp.wait_for(all_loops_ended(trial_id), 5,
                                  "env and actors event loops to end after a hard END", trial_id)
    for role, name in (("env", None), ("actor", "p1"), ("actor", "p2")):
        end = loop_end(records, trial_id, role, name)
        assert end["final"] is False, f"{role} {name}: a hard END must not produce FINAL"
        types = {entry["type"] for entry in records if entry.get("trial") == trial_id
                 and entry.get("role") == role and entry["kind"] == "event" and (name is None or entry["name"] == name)}
        assert "FINAL" not in types and "ENDING" not in types, f"{role} {name} saw {types} (no LAST expected)"

    lines = await wait_until(lambda: len(forced_end_lines(comp.log_text(), trial_id)) >= 3 and
                             forced_end_lines(comp.log_text(), trial_id), 5,
                             "SDK 'ended forcefully' warnings for env, p1 and p2",
                             lambda: comp.log_text()[-3000:])
    assert all("[Externally requested]" in line for line in lines), "\n".join(lines)


async def test_hard_terminate_while_pending(sdk, components):
    """§3.2: hard termination while PENDING goes straight to ENDED (no RUNNING, no TERMINATING)."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("c1", "player", "cogment://client"),
                                          actor("p2", "player", comp.endpoint)])
    trial_id = await sdk.start_trial(params, "hard-terminate-pending")
    await sdk.wait_state(trial_id, "PENDING", 5)
    # p2 is a service actor: it is initialised while the trial waits for the client.
    await comp.wait_for(lambda recs: select(recs, trial=trial_id, name="p2", kind="init"), 5,
                        "service actor p2 initialised while PENDING", trial_id)
    await asyncio.wait_for(sdk.controller.terminate_trial([trial_id], hard=True), 5)
    await sdk.wait_state(trial_id, "ENDED", 3, lambda: comp.records)
    records = await comp.wait_for(lambda recs: loop_end(recs, trial_id, "actor", "p2"), 5,
                                  "p2 to receive END", trial_id)
    assert loop_end(records, trial_id, "actor", "p2")["final"] is False
    assert not select(records, trial=trial_id, role="env"), "the environment must not be started"
    states = [state for state in sdk.watcher.states(trial_id) if state != "INITIALIZING"]
    assert states == ["PENDING", "ENDED"], f"watch_trials saw {states}"


# ----------------------------------------------------------------------------------------- 16


async def test_get_trial_info_and_get_actors(sdk, components):
    """§10 #16: GetTrialInfo while RUNNING, get_actors order, unknown ids, get_trial_info([]) lists all."""
    comp = await components()
    params = trial_params(comp.endpoint, two_service_actors(comp.endpoint), env_config={"obs_delay": 0.02},
                          properties={"purpose": "sc16"})
    trial_id = await sdk.start_trial(params, "sc16-info")
    pending_id = await sdk.start_trial(
        trial_params(comp.endpoint, [actor("c1", "player", "cogment://client")]), "sc16-pending")
    try:
        await comp.wait_for(lambda recs: len(action_set_events(recs, trial_id)) >= 3, 15, "3 ticks", trial_id)
        first = await sdk.trial_info(trial_id)
        await comp.wait_for(lambda recs: len(action_set_events(recs, trial_id)) >= first.tick_id + 3, 15, "3 more ticks", trial_id)
        second = await sdk.trial_info(trial_id)
        assert first is not None and second is not None
        assert first.trial_id == trial_id
        assert first.state == cogment.TrialState.RUNNING, first.state
        assert first.env_name == "env", f"default environment name must be 'env', got {first.env_name!r}"
        assert dict(first.properties) == {"purpose": "sc16"}
        assert second.tick_id > first.tick_id >= 2, (first.tick_id, second.tick_id)
        assert second.duration > first.duration > 0

        actors = await asyncio.wait_for(sdk.controller.get_actors(trial_id), 5)
        assert [(info.actor_name, info.actor_class_name) for info in actors] == [("p1", "player"),
                                                                                 ("p2", "spectator")]
        with pytest.raises(cogment.CogmentError):
            await asyncio.wait_for(sdk.controller.get_actors("no-such-trial"), 5)
        assert await asyncio.wait_for(sdk.controller.get_trial_info(["no-such-trial"]), 5) == []

        everything = await asyncio.wait_for(sdk.controller.get_trial_info([]), 5)
        listed = {info.trial_id: info.state for info in everything}
        assert listed.get(trial_id) == cogment.TrialState.RUNNING, listed
        assert listed.get(pending_id) == cogment.TrialState.PENDING, listed

        both = await asyncio.wait_for(sdk.controller.get_trial_info([trial_id, pending_id]), 5)
        assert sorted(info.trial_id for info in both) == sorted([trial_id, pending_id]), \
            "repeated trial-id metadata must all be honoured"
    finally:
        await asyncio.wait_for(sdk.controller.terminate_trial([trial_id, pending_id], hard=True), 5)
    await sdk.wait_state(trial_id, "ENDED", 5)
    await sdk.wait_state(pending_id, "ENDED", 5)


# ----------------------------------------------------------------------------------------- 17


async def test_duplicate_trial_id_requested(sdk, components):
    """§10 #17: a second start_trial with the same trial_id_requested returns ''."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("c1", "player", "cogment://client")])
    trial_id = await sdk.start_trial(params, "sc17-duplicate")
    assert trial_id == "sc17-duplicate"
    again = await sdk.start_trial(params, "sc17-duplicate")
    assert again == "", f"duplicate id must be refused with an empty trial id, got {again!r}"
    generated = await sdk.start_trial(params)
    assert generated and generated != trial_id, "without trial_id_requested a fresh id is generated"
    await asyncio.wait_for(sdk.controller.terminate_trial([trial_id, generated], hard=True), 5)
    await sdk.wait_state(trial_id, "ENDED", 5)
    await sdk.wait_state(generated, "ENDED", 5)


# ----------------------------------------------------------------------------------------- watch


async def test_watch_trials_sees_every_state_in_order(sdk, components):
    """WatchTrials: PENDING, RUNNING, TERMINATING, ENDED in order; filters; full_info; late subscriber."""
    comp = await components()
    ended_only = sdk.watch([cogment.TrialState.ENDED])
    full = sdk.watch(full_info=True)
    params = trial_params(comp.endpoint, [actor("c1", "player", "cogment://client"),
                                          actor("p2", "spectator", comp.endpoint)],
                          env_config={"end_after": 5})
    trial_id = await sdk.start_trial(params, "watch-states")
    # The client slot keeps the trial PENDING until the watcher has certainly seen it.
    await sdk.wait_state(trial_id, "PENDING", 5)
    await wait_until(lambda: trial_id in {info.trial_id for info in full.infos}, 5, "full_info watcher entry")
    client = sdk.join(trial_id, actor_name="c1")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records)
    await asyncio.wait_for(client.task, 5)

    states = [state for state in sdk.watcher.states(trial_id) if state != "INITIALIZING"]
    assert states == ["PENDING", "RUNNING", "TERMINATING", "ENDED"], f"watch_trials saw {states}"
    await wait_until(lambda: ended_only.states(trial_id), 3, "the ENDED-filtered watcher to see the trial")
    assert ended_only.states(trial_id) == ["ENDED"], ended_only.states(trial_id)
    assert all(state == "ENDED" for _, _, state in ended_only.entries), ended_only.entries
    await wait_until(lambda: "ENDED" in full.states(trial_id), 3, "the full_info watcher to see ENDED")
    full_entries = [info for info in full.infos if info.trial_id == trial_id]
    assert all(info.env_name == "env" for info in full_entries), [str(info) for info in full_entries]
    assert [info.state.name for info in full_entries if info.state.name != "INITIALIZING"] == \
        ["PENDING", "RUNNING", "TERMINATING", "ENDED"]

    late = sdk.watch([cogment.TrialState.ENDED])
    await wait_until(lambda: late.states(trial_id), 3,
                     "a watcher subscribing after the end to list the ENDED trial (initial entries, §3.10)")
    assert sdk.watcher.error is None, f"watch_trials stream failed: {sdk.watcher.error!r}"


# ----------------------------------------------------------------------------------------- bad input


def _bad_params(case: str) -> cogment.TrialParameters:
    somewhere = f"grpc://127.0.0.1:{free_port()}"
    if case == "duplicate actor names":
        return trial_params(somewhere, [actor("p1", "player", somewhere), actor("p1", "spectator", somewhere)])
    if case == "no environment endpoint":
        return trial_params("", [actor("p1", "player", somewhere)])
    if case == "no actors":
        return trial_params(somewhere, [])
    if case == "malformed actor endpoint":
        return trial_params(somewhere, [actor("p1", "player", "localhost:9001")])
    if case == "unknown actor endpoint scheme":
        return trial_params(somewhere, [actor("p1", "player", "http://127.0.0.1:9001")])
    if case == "malformed environment endpoint":
        return trial_params("127.0.0.1:9001", [actor("p1", "player", somewhere)])
    if case == "empty actor name":
        return trial_params(somewhere, [actor("", "player", somewhere)])
    if case == "actor named like the environment":
        return trial_params(somewhere, [actor("env", "player", somewhere)])
    raise ValueError(case)


BAD_INPUT_FIELD_WORDS = {
    "duplicate actor names": ["name"],
    "no environment endpoint": ["environment", "endpoint"],
    "no actors": ["actor"],
    "malformed actor endpoint": ["endpoint"],
    "unknown actor endpoint scheme": ["endpoint"],
    "malformed environment endpoint": ["endpoint"],
    "empty actor name": ["name"],
    "actor named like the environment": ["name"],
}


@pytest.mark.parametrize("case", list(BAD_INPUT_FIELD_WORDS))
async def test_start_trial_rejects_bad_params(services, case):
    """StartTrial with invalid params -> INVALID_ARGUMENT, the message naming the field (§3.1 step 7)."""
    params = _bad_params(case)
    trial_id = "bad-" + case.replace(" ", "-")
    channel, stub = lifecycle_stub(services.endpoint)
    async with channel:
        request = orchestrator_pb2.TrialStartRequest(params=params._raw_params, user_id="conformance",
                                                     trial_id_requested=trial_id)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await asyncio.wait_for(stub.StartTrial(request), 5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, \
            f"{case}: expected INVALID_ARGUMENT, got {error.value.code()} {error.value.details()!r}"
        details = (error.value.details() or "").lower()
        missing = [word for word in BAD_INPUT_FIELD_WORDS[case] if word not in details]
        assert not missing, f"{case}: error message {error.value.details()!r} does not name {missing}"


async def test_sdk_controller_raises_on_bad_params(sdk):
    """The SDK controller surfaces a rejected StartTrial as an exception (not as an empty trial id)."""
    with pytest.raises(grpc.aio.AioRpcError):
        await sdk.start_trial(_bad_params("duplicate actor names"), "bad-through-sdk")


# ----------------------------------------------------------------------------------------- max_inactivity


async def test_max_inactivity_ends_a_stalled_trial(sdk, components):
    """A required actor that never acts (no response_timeout) stalls the trial; max_inactivity=1 ends it."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint, config={"silent": True}),
                                          actor("p2", "player", comp.endpoint)], max_inactivity=1)
    started = time.monotonic()
    trial_id = await sdk.start_trial(params, "stalled-trial")
    await comp.wait_for(lambda recs: observation_events(recs, trial_id, "p1"), 5, "tick 0 observation", trial_id)
    ended = await sdk.wait_state(trial_id, "ENDED", 8, lambda: comp.records)
    assert ended - started >= 0.9, f"ended after {ended - started:.2f} s, before max_inactivity (1 s) elapsed"
    records = await comp.wait_for(all_loops_ended(trial_id), 5, "END to reach env and actors", trial_id)
    assert not action_set_events(records, trial_id), "no action set can be built without p1's action"
    for role, name in (("env", None), ("actor", "p1"), ("actor", "p2")):
        assert loop_end(records, trial_id, role, name)["final"] is False, f"{role} {name}: hard end expected"


# ----------------------------------------------------------------------------------------- parallel


async def test_two_trials_in_parallel(sdk, components):
    """Two trials at once on the same components: both complete, nothing crosses between them."""
    comp = await components()
    ids = ["parallel-a", "parallel-b"]
    for trial_id, end_after in zip(ids, (40, 60)):
        params = trial_params(comp.endpoint, two_service_actors(comp.endpoint), env_config={"end_after": end_after})
        assert await sdk.start_trial(params, trial_id) == trial_id
    for trial_id in ids:
        await sdk.wait_state(trial_id, "ENDED", 30, lambda: comp.records)
    records = comp.records
    for trial_id, end_after in zip(ids, (40, 60)):
        await comp.wait_for(all_loops_ended(trial_id), 5, "event loops to end", trial_id)
        for index, name in enumerate(["p1", "p2"]):
            observations = observation_events(records, trial_id, name)
            assert_consecutive([entry["obs"]["tick"] for entry in observations], 0, end_after,
                               f"{trial_id} {name}")
            assert [entry["obs"]["value"] for entry in observations] == \
                [observation_value(tick, index) for tick in range(end_after + 1)]
        action_sets = action_set_events(records, trial_id)
        assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, end_after - 1,
                           f"{trial_id} env")


# ----------------------------------------------------------------------------------------- 25


@pytest.mark.timeout(150)
async def test_ten_parallel_trials_of_200_ticks(sdk, components, record_property):
    """§10 #25: 10 trials x 200 ticks (env + 2 actors) all ENDED, no lost or duplicated tick."""
    comp = await components()
    ids = [f"throughput-{index}" for index in range(10)]
    ticks = 200
    started = time.monotonic()
    await asyncio.gather(*(sdk.start_trial(trial_params(comp.endpoint, two_service_actors(comp.endpoint),
                                                        env_config={"end_after": ticks}), trial_id)
                           for trial_id in ids))
    for trial_id in ids:
        await sdk.wait_state(trial_id, "ENDED", 120, lambda: comp.records)
    elapsed = time.monotonic() - started
    rate = len(ids) * ticks / elapsed
    record_property("ticks_per_second", round(rate))
    print(f"10 trials x {ticks} ticks in {elapsed:.2f} s: {rate:.0f} ticks/s")

    for trial_id in ids:
        records = await comp.wait_for(all_loops_ended(trial_id), 10, "event loops to end", trial_id)
        for name in ("p1", "p2"):
            observations = observation_events(records, trial_id, name)
            assert_consecutive([entry["obs"]["tick"] for entry in observations], 0, ticks, f"{trial_id} {name}")
            assert loop_end(records, trial_id, "actor", name)["final"] is True
        action_sets = action_set_events(records, trial_id)
        assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, ticks - 1,
                           f"{trial_id} env")
        assert loop_end(records, trial_id, "env")["final"] is True, summary(records, trial_id)


# ----------------------------------------------------------------------------------------- more ending cases


async def test_hard_terminate_while_an_actor_is_blocked(sdk, components):
    """§12: hard termination must work while a component is blocked (an actor taking 3 s to act)."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint, config={"delay": 3.0}),
                                          actor("p2", "player", comp.endpoint)])
    trial_id = await sdk.start_trial(params, "hard-terminate-blocked")
    await comp.wait_for(lambda recs: observation_events(recs, trial_id, "p1"), 5, "tick 0 observation", trial_id)
    await sdk.wait_state(trial_id, "RUNNING", 5)
    requested = time.monotonic()
    await asyncio.wait_for(sdk.controller.terminate_trial([trial_id], hard=True), 5)
    ended = await sdk.wait_state(trial_id, "ENDED", 3, lambda: comp.records)
    assert ended - requested <= 1.0, f"ENDED {ended - requested:.2f} s after the request while p1 was busy"
    records = await comp.wait_for(lambda recs: loop_end(recs, trial_id, "env") and
                                  loop_end(recs, trial_id, "actor", "p2"), 5, "END to env and p2", trial_id)
    assert loop_end(records, trial_id, "env")["final"] is False


async def test_terminate_trial_metadata(sdk, services):
    """§3.10: TerminateTrial needs at least one trial-id; unknown ids are skipped without error."""
    channel, stub = lifecycle_stub(services.endpoint)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(stub.TerminateTrial(orchestrator_pb2.TerminateTrialRequest()), 5)
    await asyncio.wait_for(sdk.controller.terminate_trial(["no-such-trial"]), 5)
    await asyncio.wait_for(sdk.controller.terminate_trial(["no-such-trial"], hard=True), 5)
