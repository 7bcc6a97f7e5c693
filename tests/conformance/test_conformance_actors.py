"""Orchestrator conformance: actors, environment, rewards, messages, timeouts and failures.

Scenarios of ``/work/shared/docs/cogment-protocol.md`` §10: 6 and 7 (client actors), 8 (rewards),
9 (messages), 10-15 (optional/required actors, timeouts, failures), plus a 200-tick trial with rewards
and messages both ways, a crashed actor process and an unreachable environment.
"""

from __future__ import annotations

import asyncio
import logging
import time

import cogment
import grpc
import pytest

from conformance.harness import (
    action_set_events,
    actor,
    assert_consecutive,
    free_port,
    loop_end,
    observation_events,
    select,
    summary,
    trial_params,
    wait_until,
)
from conformance.scripted import observation_value

pytestmark = pytest.mark.timeout(90)


def actor_stream(records, trial_id: str, name: str) -> list[dict]:
    """Every event of one actor, in the order the SDK delivered them."""
    return [entry for entry in records if entry.get("trial") == trial_id and entry.get("role") == "actor"
            and entry.get("name") == name and entry["kind"] == "event"]


def env_stream(records, trial_id: str) -> list[dict]:
    return [entry for entry in records if entry.get("trial") == trial_id and entry.get("role") == "env"
            and entry["kind"] == "event"]


def position_of_observation(stream: list[dict], tick: int) -> int:
    for position, entry in enumerate(stream):
        if "obs" in entry and entry["obs"]["tick"] == tick:
            return position
    raise AssertionError(f"no observation for tick {tick}")


def position_of_action_set(stream: list[dict], tick: int) -> int:
    for position, entry in enumerate(stream):
        if "actions" in entry and entry["actions"][0]["tick"] == tick:
            return position
    raise AssertionError(f"no action set for tick {tick}")


def forced_end_details(log: str, trial_id: str, who: str) -> list[str]:
    """END details of a hard end, from the SDK warning ``... [<who>] ... ended forcefully [<details>]``."""
    found = []
    for line in log.splitlines():
        if f"Trial [{trial_id}]" in line and f"[{who}]" in line and "ended forcefully [" in line:
            found.append(line.rsplit("ended forcefully [", 1)[1].rstrip().removesuffix("]"))
    return found


def loops_ended(trial_id: str, names=("p1", "p2"), env: bool = True):
    def predicate(records):
        return (not env or loop_end(records, trial_id, "env")) and all(
            loop_end(records, trial_id, "actor", name) for name in names)
    return predicate


# ----------------------------------------------------------------------------------------- 6


async def test_client_actor_joins_by_name(sdk, components):
    """§10 #6: a cogment://client slot keeps the trial PENDING until the client joins by actor_name."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("c1", "player", "cogment://client", config={}),
                                          actor("p2", "spectator", comp.endpoint)],
                          env_config={"end_after": 20})
    trial_id = await sdk.start_trial(params, "sc6-client-by-name")
    await sdk.wait_state(trial_id, "PENDING", 5)
    await asyncio.sleep(0.5)  # the scenario: time passes and nothing starts while the client is away
    info = await sdk.trial_info(trial_id)
    assert info is not None and info.state == cogment.TrialState.PENDING, f"before join: {info}"
    assert not select(comp.records, trial=trial_id, role="env"), "environment started before the client joined"

    client = sdk.join(trial_id, actor_name="c1")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records + sdk.records)
    await asyncio.wait_for(client.task, 5)  # join_trial returns once the client's session is over

    init = select(sdk.records, trial=trial_id, kind="init")
    assert len(init) == 1 and init[0]["name"] == "c1" and init[0]["class"] == "player", init
    assert init[0]["env_name"] == "env"
    assert init[0]["impl"] == "scripted", "ActorParams.implementation must reach the client (impl_name)"
    observations = observation_events(sdk.records, trial_id, "c1")
    assert_consecutive([entry["obs"]["tick"] for entry in observations], 0, 20, "client observations")
    assert [entry["obs"]["value"] for entry in observations] == [observation_value(t, 0) for t in range(21)]
    assert loop_end(sdk.records, trial_id, "actor", "c1")["final"] is True, "client got no FINAL"

    records = await comp.wait_for(loops_ended(trial_id, names=("p2",)), 5, "env and p2 loops", trial_id)
    action_sets = action_set_events(records, trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, 19, "env action sets")
    for entry in action_sets:
        tick = entry["actions"][0]["tick"]
        assert entry["actions"][0]["status"] == "ACTIVE"
        assert entry["actions"][0]["value"] == observation_value(tick, 0) + 1, "client action did not reach env"


# ----------------------------------------------------------------------------------------- 7


async def expect_join_refused(sdk, trial_id: str, **slot) -> grpc.aio.AioRpcError:
    try:
        result = await asyncio.wait_for(
            sdk.context.join_trial(trial_id, cogment.Endpoint(sdk.endpoint), **slot), 5)
    except grpc.aio.AioRpcError as error:
        return error
    except TimeoutError:
        raise AssertionError(f"join_trial({trial_id!r}, {slot}) neither refused nor answered within 5 s") from None
    raise AssertionError(f"join_trial({trial_id!r}, {slot}) was not refused (returned {result!r})")


async def test_client_actor_joins_by_class_and_bad_joins_are_refused(sdk, components):
    """§10 #7: join by actor_class takes the first free client slot of that class; a second join on the
    same slot, a join with no free slot and a join of an unknown trial are refused (NOT_FOUND for the latter)."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint),
                                          actor("c1", "player", "cogment://client"),
                                          actor("c2", "spectator", "cogment://client")],
                          env_config={"end_after": 10})
    trial_id = await sdk.start_trial(params, "sc7-client-by-class")
    await sdk.wait_state(trial_id, "PENDING", 5)

    first = sdk.join(trial_id, actor_class="player")
    await wait_until(lambda: select(sdk.records, trial=trial_id, kind="init"), 5, "the class join to get its slot")
    init = select(sdk.records, trial=trial_id, kind="init")
    assert [(entry["name"], entry["class"]) for entry in init] == [("c1", "player")], \
        "join by class 'player' must take c1 (p1 is a service actor)"

    await expect_join_refused(sdk, trial_id, actor_name="c1")
    await expect_join_refused(sdk, trial_id, actor_class="player")
    await expect_join_refused(sdk, trial_id, actor_name="p1")  # a service actor slot is not joinable
    unknown = await expect_join_refused(sdk, "no-such-trial", actor_name="c1")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND, f"unknown trial: {unknown.code()} {unknown.details()!r}"

    assert not first.task.done(), "the refused joins must not disturb the first client"
    second = sdk.join(trial_id, actor_name="c2")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records + sdk.records)
    await asyncio.wait_for(asyncio.gather(first.task, second.task), 5)
    for name in ("c1", "c2"):
        observations = observation_events(sdk.records, trial_id, name)
        assert_consecutive([entry["obs"]["tick"] for entry in observations], 0, 10, f"{name} observations")
        assert loop_end(sdk.records, trial_id, "actor", name)["final"] is True


# ----------------------------------------------------------------------------------------- 8


async def test_rewards_aggregation_and_receiver_patterns(sdk, components):
    """§10 #8: two rewards to p1 at tick 0 arrive as one (2.5, 2 sources) before observation 1;
    '*', '<class>.*' and '<class>.<name>' reach the right actors."""
    comp = await components()
    rewards = [
        {"to": ["p1"], "value": 1.0, "confidence": 1.0, "ticks": [0]},
        {"to": ["p1"], "value": 3.0, "confidence": 3.0, "ticks": [0]},
        {"to": ["*"], "value": 5.0, "confidence": 1.0, "ticks": [1]},
        {"to": ["spectator.*"], "value": 7.0, "confidence": 1.0, "ticks": [2]},
        {"to": ["player.p2"], "value": 9.0, "confidence": 1.0, "ticks": [3]},
    ]
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint), actor("p2", "player", comp.endpoint),
                                          actor("s1", "spectator", comp.endpoint)],
                          env_config={"end_after": 5, "rewards": rewards})
    trial_id = await sdk.start_trial(params, "sc8-rewards")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records)
    records = await comp.wait_for(loops_ended(trial_id, ("p1", "p2", "s1")), 5, "loops to end", trial_id)

    expected = {
        "p1": [(0, 2.5, [("env", 1.0, 1.0), ("env", 3.0, 3.0)])],
        "p2": [(1, 5.0, [("env", 5.0, 1.0)]), (3, 9.0, [("env", 9.0, 1.0)])],
        "s1": [(1, 5.0, [("env", 5.0, 1.0)]), (2, 7.0, [("env", 7.0, 1.0)])],
    }
    expected["p1"].append((1, 5.0, [("env", 5.0, 1.0)]))
    for name, wanted in expected.items():
        stream = actor_stream(records, trial_id, name)
        received = [(position, reward) for position, entry in enumerate(stream)
                    for reward in entry.get("rewards", [])]
        got = [(reward["tick"], reward["value"],
                sorted((source["sender"], source["value"], source["confidence"]) for source in reward["sources"]))
               for _, reward in received]
        assert got == [(tick, value, sorted(sources)) for tick, value, sources in wanted], \
            f"{name}: rewards received {got}"
        for position, reward in received:
            assert reward["receiver"] == name, f"{name}: receiver_name {reward['receiver']!r}"
            tick = reward["tick"]
            assert position_of_observation(stream, tick) < position < position_of_observation(stream, tick + 1), \
                f"{name}: reward of tick {tick} not delivered between observations {tick} and {tick + 1}"


# ----------------------------------------------------------------------------------------- 9


async def test_messages_are_forwarded_immediately(sdk, components):
    """§10 #9: actor->env, actor->actor and env->'*' messages, with sender_name and the current tick."""
    comp = await components()
    params = trial_params(
        comp.endpoint,
        [actor("p1", "player", comp.endpoint, config={"messages": [{"to": ["env"]}, {"to": ["p2"]}]}),
         actor("p2", "spectator", comp.endpoint)],
        env_config={"end_after": 5, "messages": [{"to": ["*"]}]})
    trial_id = await sdk.start_trial(params, "sc9-messages")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records)
    records = await comp.wait_for(loops_ended(trial_id), 5, "loops to end", trial_id)

    def messages(stream):
        return [(position, message) for position, entry in enumerate(stream)
                for message in entry.get("messages", [])]

    env_events = env_stream(records, trial_id)
    to_env = messages(env_events)
    assert [(m["sender"], m["receiver"], m["tick"], m["text"]) for _, m in to_env] == \
        [("p1", "env", tick, f"p1@{tick}") for tick in range(5)], f"env got {[m for _, m in to_env]}"
    for position, message in to_env:
        assert position < position_of_action_set(env_events, message["tick"]), \
            f"message {message['text']} reached the env after the action set it preceded"

    p2_events = actor_stream(records, trial_id, "p2")
    from_p1 = [(position, m) for position, m in messages(p2_events) if m["sender"] == "p1"]
    assert [(m["receiver"], m["tick"], m["text"]) for _, m in from_p1] == \
        [("p2", tick, f"p1@{tick}") for tick in range(5)], f"p2 got {[m for _, m in from_p1]}"
    for position, message in from_p1:
        assert position < position_of_observation(p2_events, message["tick"] + 1), \
            f"{message['text']} reached p2 after the next observation"

    for name in ("p1", "p2"):
        stream = actor_stream(records, trial_id, name)
        from_env = [(position, m) for position, m in messages(stream) if m["sender"] == "env"]
        assert [(m["receiver"], m["tick"], m["text"]) for _, m in from_env] == \
            [(name, tick, f"env@{tick}") for tick in range(5)], f"{name} got {[m for _, m in from_env]}"
        for position, message in from_env:
            assert position < position_of_observation(stream, message["tick"] + 1), \
                f"{message['text']} reached {name} after the next observation"


# ----------------------------------------------------------------------------------------- 200 ticks


@pytest.mark.timeout(120)
async def test_200_ticks_with_rewards_and_messages_both_ways(sdk, components):
    """Env + 2 service actors for 200 ticks; env->actors and actor->actor rewards; messages env->actors,
    actor->env and actor->actor, every tick."""
    comp = await components()
    ticks = 200
    params = trial_params(
        comp.endpoint,
        [actor("p1", "player", comp.endpoint, config={
            "rewards": [{"to": ["p2"], "value": 3.0, "confidence": 1.0}],
            "messages": [{"to": ["p2"]}]}),
         actor("p2", "player", comp.endpoint, config={"messages": [{"to": ["env"]}]})],
        env_config={"end_after": ticks, "rewards": [{"to": ["*"], "value": 1.0, "confidence": 1.0}],
                    "messages": [{"to": ["*"]}]})
    started = time.monotonic()
    trial_id = await sdk.start_trial(params, "two-hundred-ticks")
    await sdk.wait_state(trial_id, "ENDED", 90, lambda: comp.records)
    print(f"200 ticks in {time.monotonic() - started:.2f} s")
    records = await comp.wait_for(loops_ended(trial_id), 10, "loops to end", trial_id)

    for name in ["p1", "p2"]:
        stream = actor_stream(records, trial_id, name)
        observations = [entry for entry in stream if "obs" in entry]
        assert_consecutive([entry["obs"]["tick"] for entry in observations], 0, ticks, f"{name} observations")
        assert observations[-1]["type"] == "ENDING" and stream[-1]["type"] == "FINAL"
        rewards = [reward for entry in stream for reward in entry.get("rewards", [])]
        assert [reward["tick"] for reward in rewards] == list(range(ticks)), f"{name}: one reward per tick"
        if name == "p1":
            assert all(reward["value"] == 1.0 and len(reward["sources"]) == 1 for reward in rewards)
        else:
            assert all(reward["value"] == 2.0 and
                       sorted(source["sender"] for source in reward["sources"]) == ["env", "p1"]
                       for reward in rewards), "p2: env (1.0) and p1 (3.0) must aggregate to 2.0"
        messages = [message for entry in stream for message in entry.get("messages", [])]
        from_env = [message["tick"] for message in messages if message["sender"] == "env"]
        assert from_env == list(range(ticks)), f"{name}: env messages by tick"
        if name == "p2":
            from_p1 = [message["tick"] for message in messages if message["sender"] == "p1"]
            assert from_p1 == list(range(ticks)), "p2: p1 messages by tick"

    env_events = env_stream(records, trial_id)
    action_sets = [entry for entry in env_events if "actions" in entry]
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, ticks - 1, "env action sets")
    for entry in action_sets:
        tick = entry["actions"][0]["tick"]
        assert [action["value"] for action in entry["actions"]] == \
            [observation_value(tick, index) + 1 for index in range(2)], entry
    env_messages = [message for entry in env_events for message in entry.get("messages", [])]
    assert [(m["sender"], m["tick"]) for m in env_messages] == [("p2", tick) for tick in range(ticks)]
    assert loop_end(records, trial_id, "env")["final"] is True


# ----------------------------------------------------------------------------------------- 10


async def test_optional_silent_actor_gets_default_action(sdk, components):
    """§10 #10: optional actor, response_timeout 0.2 s, default action, never acting."""
    comp = await components()
    params = trial_params(
        comp.endpoint,
        [actor("p1", "player", comp.endpoint),
         actor("p2", "player", comp.endpoint, config={"silent": True}, optional=True, response_timeout=0.2,
               default_action=-7)],
        env_config={"end_after": 5}, datalog_endpoint=comp.endpoint)
    trial_id = await sdk.start_trial(params, "sc10-default-action")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records)
    records = await comp.wait_for(loops_ended(trial_id), 5, "loops to end", trial_id)

    action_sets = action_set_events(records, trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, 4, "env action sets")
    for entry in action_sets:
        tick = entry["actions"][0]["tick"]
        assert entry["actions"][0]["value"] == observation_value(tick, 0) + 1
        assert (entry["actions"][1]["status"], entry["actions"][1]["value"]) == ("ACTIVE", -7), \
            f"tick {tick}: p2 should get its default action: {entry['actions'][1]}"
    assert loop_end(records, trial_id, "env")["final"] is True

    records = await comp.wait_for(lambda recs: loop_end(recs, trial_id, "datalog"), 5, "datalog end", trial_id)
    samples = select(records, trial=trial_id, role="datalog", kind="sample")
    by_tick = {sample["tick"]: sample for sample in samples}
    for tick in range(5):
        assert by_tick[tick]["default_actors"] == [1], f"sample {tick}: {by_tick[tick]}"
        assert by_tick[tick]["unavailable_actors"] == []


async def test_optional_actor_that_stops_answering_gets_default_action(sdk, components):
    """An optional actor acting for 3 ticks, then silent: its default action from tick 3, trial completes."""
    comp = await components()
    params = trial_params(
        comp.endpoint,
        [actor("p1", "player", comp.endpoint),
         actor("p2", "player", comp.endpoint, config={"silent_from": 3}, optional=True, response_timeout=0.3,
               default_action=-7)],
        env_config={"end_after": 6})
    trial_id = await sdk.start_trial(params, "optional-stops-answering")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records)
    records = await comp.wait_for(loops_ended(trial_id), 5, "loops to end", trial_id)
    action_sets = action_set_events(records, trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, 5, "env action sets")
    assert [entry["actions"][1]["value"] for entry in action_sets] == \
        [observation_value(tick, 1) + 1 for tick in range(3)] + [-7, -7, -7]
    for name in ("p1", "p2"):
        assert loop_end(records, trial_id, "actor", name)["final"] is True


async def test_required_actor_that_stops_answering_ends_the_trial(sdk, components):
    """The same actor, required (even with a default action): the trial is hard-terminated at tick 3."""
    comp = await components()
    params = trial_params(
        comp.endpoint,
        [actor("p1", "player", comp.endpoint),
         actor("p2", "player", comp.endpoint, config={"silent_from": 3}, response_timeout=0.3, default_action=-7)],
        env_config={"end_after": 6}, datalog_endpoint=comp.endpoint)
    trial_id = await sdk.start_trial(params, "required-stops-answering")
    await sdk.wait_state(trial_id, "ENDED", 10, lambda: comp.records)
    records = await comp.wait_for(loops_ended(trial_id), 5, "END to reach env and actors", trial_id)
    action_sets = action_set_events(records, trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, 2, "env action sets")
    for role, name in (("env", None), ("actor", "p1"), ("actor", "p2")):
        assert loop_end(records, trial_id, role, name)["final"] is False, f"{role} {name}: hard end expected"
    details = await wait_until(lambda: forced_end_details(comp.log_text(), trial_id, "env"), 3,
                               "the env's hard END warning", lambda: comp.log_text()[-2000:])
    assert details[0], "END sent to the environment should carry details"
    # §5.2: every sample reaches the datalog at the end, the last one ENDED with the forced termination event.
    records = await comp.wait_for(lambda recs: loop_end(recs, trial_id, "datalog"), 5, "datalog end", trial_id)
    samples = select(records, trial=trial_id, role="datalog", kind="sample")
    assert_consecutive([sample["tick"] for sample in samples], 0, 3, "datalog samples")
    assert samples[-1]["state"] == "ENDED"
    assert any(event.startswith("Forced termination") for event in samples[-1]["events"]), samples[-1]["events"]
    assert samples[-1]["unavailable_actors"] == [] and samples[-1]["default_actors"] == [1], \
        "tick 3: p2 timed out and had a default action"


# ----------------------------------------------------------------------------------------- 11


async def test_optional_unreachable_actor_is_unavailable(sdk, components):
    """§10 #11: optional actor on a port nobody listens on: trial runs, env sees it UNAVAILABLE."""
    comp = await components()
    params = trial_params(
        comp.endpoint,
        [actor("p1", "player", comp.endpoint),
         actor("p2", "player", f"grpc://127.0.0.1:{free_port()}", optional=True, initial_connection_timeout=2)],
        env_config={"end_after": 3})
    trial_id = await sdk.start_trial(params, "sc11-optional-unreachable")
    await sdk.wait_state(trial_id, "ENDED", 20, lambda: comp.records)
    records = await comp.wait_for(loops_ended(trial_id, ("p1",)), 5, "loops to end", trial_id)
    env_init = select(records, trial=trial_id, role="env", kind="init")
    assert env_init and env_init[0]["actors"] == [["p1", "player"], ["p2", "player"]], \
        "actors_in_trial must include disengaged actors"
    action_sets = action_set_events(records, trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, 2, "env action sets")
    for entry in action_sets:
        assert entry["actions"][0]["status"] == "ACTIVE"
        assert (entry["actions"][1]["status"], entry["actions"][1]["value"]) == ("UNAVAILABLE", None), entry
    assert loop_end(records, trial_id, "actor", "p1")["final"] is True


# ----------------------------------------------------------------------------------------- 12


@pytest.mark.parametrize("failure", ["unreachable", "unknown class"])
async def test_required_actor_failing_init_ends_the_trial(sdk, components, failure):
    """§10 #12: a required actor that cannot be initialised -> ENDED, environment never contacted,
    the actors already initialised get END."""
    comp = await components()
    if failure == "unreachable":
        bad = actor("p2", "player", f"grpc://127.0.0.1:{free_port()}", initial_connection_timeout=2)
    else:
        bad = actor("p2", "ghost", comp.endpoint)
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint), bad], env_config={"end_after": 3})
    trial_id = await sdk.start_trial(params, f"sc12-{failure.replace(' ', '-')}")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records)
    records = await comp.wait_for(lambda recs: loop_end(recs, trial_id, "actor", "p1"), 5,
                                  "p1 (initialised) to get END", trial_id)
    assert loop_end(records, trial_id, "actor", "p1")["final"] is False
    await asyncio.sleep(0.3)  # the scenario: time passes and the environment is still never contacted
    assert not select(comp.records, trial=trial_id, role="env"), "the environment must not be contacted"
    states = sdk.watcher.states(trial_id)
    assert "RUNNING" not in states, states


# ----------------------------------------------------------------------------------------- 13


async def test_required_actor_returning_early_ends_the_trial(sdk, components):
    """§10 #13: a required actor's implementation returns after 5 ticks -> hard termination."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint),
                                          actor("p2", "player", comp.endpoint, config={"return_after": 5})],
                          env_config={"end_after": 50})
    trial_id = await sdk.start_trial(params, "sc13-returns-early")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records)
    records = await comp.wait_for(loops_ended(trial_id), 5, "END to reach env and p1", trial_id)
    assert loop_end(records, trial_id, "actor", "p2")["reason"] == "returned_early"
    action_sets = action_set_events(records, trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, 4, "env action sets")
    assert loop_end(records, trial_id, "env")["final"] is False, "env: hard END expected"
    assert loop_end(records, trial_id, "actor", "p1")["final"] is False, "p1: hard END expected"
    details = await wait_until(lambda: forced_end_details(comp.log_text(), trial_id, "env"), 3,
                               "the env's hard END warning", lambda: comp.log_text()[-2000:])
    assert details[0], "END sent to the environment should carry details"


# ----------------------------------------------------------------------------------------- 14


async def test_required_actor_with_response_timeout_never_acting(sdk, components):
    """§10 #14: required actor with response_timeout that never acts -> hard-terminated at tick 0."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint),
                                          actor("p2", "player", comp.endpoint, config={"silent": True},
                                                response_timeout=0.2)],
                          env_config={"end_after": 5})
    started = time.monotonic()
    trial_id = await sdk.start_trial(params, "sc14-required-timeout")
    ended = await sdk.wait_state(trial_id, "ENDED", 10, lambda: comp.records)
    assert ended - started < 5
    records = await comp.wait_for(loops_ended(trial_id), 5, "END to reach env and actors", trial_id)
    assert not action_set_events(records, trial_id), "no action set may reach the env"
    for role, name in (("env", None), ("actor", "p1"), ("actor", "p2")):
        assert loop_end(records, trial_id, role, name)["final"] is False, f"{role} {name}: hard end expected"


# ----------------------------------------------------------------------------------------- 15


async def test_client_slot_nobody_joins_required(sdk, components):
    """§10 #15 (required): initial_connection_timeout=1 on a client slot nobody joins -> ENDED after ~1 s."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("c1", "player", "cogment://client", initial_connection_timeout=1),
                                          actor("p2", "player", comp.endpoint)])
    started = time.monotonic()
    trial_id = await sdk.start_trial(params, "sc15-required-client")
    ended = await sdk.wait_state(trial_id, "ENDED", 8, lambda: comp.records)
    assert 0.8 <= ended - started <= 6, f"ended {ended - started:.2f} s after start (timeout 1 s)"
    records = await comp.wait_for(lambda recs: loop_end(recs, trial_id, "actor", "p2"), 5, "p2 to get END", trial_id)
    assert loop_end(records, trial_id, "actor", "p2")["final"] is False
    assert not select(records, trial=trial_id, role="env"), "the environment must not be contacted"


async def test_client_slot_nobody_joins_optional(sdk, components):
    """§10 #15 (optional): the trial runs with the client slot unavailable."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("c1", "player", "cogment://client", initial_connection_timeout=1,
                                                optional=True),
                                          actor("p2", "player", comp.endpoint)],
                          env_config={"end_after": 3})
    trial_id = await sdk.start_trial(params, "sc15-optional-client")
    await sdk.wait_state(trial_id, "ENDED", 10, lambda: comp.records)
    records = await comp.wait_for(loops_ended(trial_id, ("p2",)), 5, "loops to end", trial_id)
    action_sets = action_set_events(records, trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, 2, "env action sets")
    for entry in action_sets:
        assert entry["actions"][0]["status"] == "UNAVAILABLE", entry
        assert entry["actions"][1]["status"] == "ACTIVE", entry
    assert loop_end(records, trial_id, "env")["final"] is True


# ----------------------------------------------------------------------------------------- crash


async def test_actor_process_killed_mid_trial(sdk, components, services_log):
    """An actor whose process is killed mid-trial ends the trial, with a reason one can find."""
    env_side = await components("env-side", serve=("env",))
    actor_side = await components("actor-side", serve=("actors",))
    params = trial_params(env_side.endpoint, [actor("p1", "player", actor_side.endpoint),
                                              actor("p2", "player", actor_side.endpoint)],
                          env_config={"obs_delay": 0.01})
    trial_id = await sdk.start_trial(params, "actor-crash")
    await actor_side.wait_for(lambda recs: len(observation_events(recs, trial_id, "p2")) >= 5, 15,
                              "5 observations before the crash", trial_id)
    actor_side.kill()
    killed = time.monotonic()
    ended = await sdk.wait_state(trial_id, "ENDED", 15, lambda: env_side.records)
    print(f"trial ENDED {ended - killed:.2f} s after the actor process was killed")
    records = await env_side.wait_for(lambda recs: loop_end(recs, trial_id, "env"), 5, "env to get END", trial_id)
    assert loop_end(records, trial_id, "env")["final"] is False, "env: hard END expected"

    details = forced_end_details(env_side.log_text(), trial_id, "env")
    log = services_log()
    logged = [line for line in log.splitlines() if trial_id in line and ("p1" in line or "p2" in line)]
    assert (details and details[0]) or logged, (
        "no reason visible: END to the env had no details and the services log has no line naming the "
        f"trial and the actor\nenv END details: {details}\nservices log tail:\n{log[-2000:]}")


async def test_components_started_again_serve_the_next_trial_at_once(sdk, components):
    """Components that crashed and came back on their port serve the next trial at once.

    While they were down, a trial failed and gRPC began backing off its reconnections; a trial
    started once they are back must not fail on that stale backoff (the main job restarts crashed
    components and goes on with its trials).
    """
    comp = await components()
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint)], env_config={"end_after": 3})
    await sdk.wait_state(await sdk.start_trial(params, "before-crash"), "ENDED", 15, lambda: comp.records)
    comp.kill()
    await sdk.wait_state(await sdk.start_trial(params, "while-down"), "ENDED", 15, lambda: comp.records)
    await asyncio.sleep(3)  # long enough for a second failed reconnection and a longer backoff
    comp.start()
    await comp.wait_ready()
    trial_id = await sdk.start_trial(params, "after-restart")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records)
    records = await comp.wait_for(loops_ended(trial_id, ("p1",)), 5, "the trial's loops to end", trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_set_events(records, trial_id)], 0, 2,
                       "env action sets of the trial after the restart")


# ----------------------------------------------------------------------------------------- unreachable env


@pytest.mark.timeout(90)
async def test_unreachable_environment_fails_the_trial(sdk, components):
    """An environment endpoint nobody listens on: the trial fails (ENDED) instead of hanging, and the
    service actors already initialised get END."""
    comp = await components(serve=("actors",))
    params = trial_params(f"grpc://127.0.0.1:{free_port()}", [actor("p1", "player", comp.endpoint),
                                                                actor("p2", "player", comp.endpoint)])
    started = time.monotonic()
    trial_id = await sdk.start_trial(params, "unreachable-env")
    ended = await sdk.wait_state(trial_id, "ENDED", 35, lambda: comp.records)
    print(f"unreachable environment: trial ENDED after {ended - started:.2f} s")
    records = await comp.wait_for(loops_ended(trial_id, env=False), 5, "END to reach p1 and p2", trial_id)
    for name in ("p1", "p2"):
        assert loop_end(records, trial_id, "actor", name)["final"] is False, summary(records, trial_id)
    assert "RUNNING" not in sdk.watcher.states(trial_id)


# ----------------------------------------------------------------------------------------- more actor cases


async def test_optional_actor_leaving_is_unavailable_afterwards(sdk, components):
    """§3.9: an optional actor whose implementation returns is disengaged; the trial goes on with it
    UNAVAILABLE (no default action) and it gets nothing more."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint),
                                          actor("p2", "player", comp.endpoint, config={"return_after": 3},
                                                optional=True)],
                          env_config={"end_after": 8})
    trial_id = await sdk.start_trial(params, "optional-leaves")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records)
    records = await comp.wait_for(loops_ended(trial_id), 5, "loops to end", trial_id)
    action_sets = action_set_events(records, trial_id)
    assert_consecutive([entry["actions"][0]["tick"] for entry in action_sets], 0, 7, "env action sets")
    assert [entry["actions"][1]["status"] for entry in action_sets] == ["ACTIVE"] * 3 + ["UNAVAILABLE"] * 5, \
        [entry["actions"][1] for entry in action_sets]
    assert loop_end(records, trial_id, "env")["final"] is True
    assert loop_end(records, trial_id, "actor", "p1")["final"] is True
    assert [entry["obs"]["tick"] for entry in observation_events(records, trial_id, "p2")] == [0, 1, 2, 3]


async def test_hard_terminate_releases_a_client_actor(sdk, components):
    """A hard termination sends END to a joined client actor: its loop ends without FINAL and
    join_trial returns."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("c1", "player", "cogment://client")],
                          env_config={"obs_delay": 0.02})
    trial_id = await sdk.start_trial(params, "hard-terminate-client")
    client = sdk.join(trial_id, actor_name="c1")
    await wait_until(lambda: len(observation_events(sdk.records, trial_id, "c1")) >= 3, 10, "3 client ticks")
    await asyncio.wait_for(sdk.controller.terminate_trial([trial_id], hard=True), 5)
    await sdk.wait_state(trial_id, "ENDED", 3)
    await asyncio.wait_for(client.task, 5)
    assert loop_end(sdk.records, trial_id, "actor", "c1")["final"] is False
    await expect_join_refused(sdk, trial_id, actor_name="c1")  # an ENDED trial takes no client


@pytest.mark.parametrize("buffered", [5, 2])
async def test_late_rewards_are_stored_not_delivered(sdk, components, buffered):
    """§3.6/§5.2: a reward for a past tick is not delivered to actors; it is stored in that tick's sample
    while buffered (nb_buffered_ticks=5), else sent as an out-of-sync sample (default 2)."""
    comp = await components()
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint)],
                          env_config={"end_after": 6, "late_rewards": [{"to": ["p1"], "value": 4.0, "lag": 1}]},
                          datalog_endpoint=comp.endpoint, nb_buffered_ticks=buffered)
    trial_id = await sdk.start_trial(params, f"late-rewards-{buffered}")
    await sdk.wait_state(trial_id, "ENDED", 15, lambda: comp.records)
    records = await comp.wait_for(lambda recs: loop_end(recs, trial_id, "datalog") and
                                  loop_end(recs, trial_id, "actor", "p1"), 5, "datalog and p1 ends", trial_id)
    delivered = [entry for entry in actor_stream(records, trial_id, "p1") if entry.get("rewards")]
    assert not delivered, f"rewards for past ticks must not be delivered: {delivered}"
    samples = select(records, trial=trial_id, role="datalog", kind="sample")
    in_sync = [sample for sample in samples if not sample["out_of_sync"]]
    out_of_sync = [sample for sample in samples if sample["out_of_sync"]]
    assert_consecutive([sample["tick"] for sample in in_sync], 0, 6, "in-sync samples")
    late_ticks = list(range(5))  # rewards for ticks 0..4, sent after the action sets of ticks 1..5
    if buffered == 5:
        assert not out_of_sync, out_of_sync
        assert [sample["nb_rewards"] for sample in in_sync] == [1] * 5 + [0, 0], \
            [(sample["tick"], sample["nb_rewards"]) for sample in in_sync]
    else:
        assert sorted(sample["tick"] for sample in out_of_sync) == late_ticks, out_of_sync
        assert all(sample["nb_rewards"] == 1 and "Out of sync reward" in sample["events"] for sample in out_of_sync)
        assert all(sample["nb_rewards"] == 0 for sample in in_sync)


async def test_join_of_an_unknown_trial_is_always_not_found(sdk, caplog):
    """Joining an unknown trial must fail with NOT_FOUND every time, not only most of the time.

    Rejecting the call before reading the client's first message races with the SDK writing that
    message, and the SDK then sees INTERNAL ("Internal error from Core") instead of the real status.
    300 attempts make that race visible.
    """
    caplog.set_level(logging.CRITICAL, logger="cogment.sdk")  # the SDK logs a traceback per refused join
    codes: dict[str, int] = {}
    for _ in range(300):
        error = await expect_join_refused(sdk, "no-such-trial", actor_name="c1")
        key = f"{error.code().name}: {error.details()}"
        codes[key] = codes.get(key, 0) + 1
    assert list(codes) and all(key.startswith("NOT_FOUND") for key in codes), f"join of an unknown trial: {codes}"
