"""Orchestrator conformance: what the orchestrator sends to a datalog.

§10 #18 with the SDK datalog service, and an end-to-end check with our own datastore as
``datalog_endpoint`` read back through the SDK ``Datastore`` (the datastore's own scenarios 19-21
belong to its suite).
"""

from __future__ import annotations

import asyncio
import time

import cogment
import pytest

from conformance.harness import actor, assert_consecutive, loop_end, select, trial_params
from conformance.scripted import observation_value

pytestmark = pytest.mark.timeout(90)


def two_actors(endpoint: str) -> list[cogment.ActorParameters]:
    return [actor("p1", "player", endpoint), actor("p2", "spectator", endpoint)]


# ----------------------------------------------------------------------------------------- 18


async def test_sdk_datalog_receives_params_then_one_sample_per_tick(sdk, components):
    """§10 #18: TrialParams first, then samples 0..last consecutive, one action per actor, last ENDED."""
    comp = await components()
    params = trial_params(comp.endpoint, two_actors(comp.endpoint), max_steps=10, datalog_endpoint=comp.endpoint,
                          properties={"suite": "conformance"})
    trial_id = await sdk.start_trial(params, "sc18-datalog")
    await sdk.wait_state(trial_id, "ENDED", 20, lambda: comp.records)
    records = await comp.wait_for(lambda recs: loop_end(recs, trial_id, "datalog"), 5,
                                  "the SDK datalog to see the ENDED sample", trial_id)

    mine = [entry for entry in records if entry.get("trial") == trial_id and entry.get("role") == "datalog"]
    assert mine[0]["kind"] == "params", "TrialParams must be the first datalog message"
    assert mine[0]["actors"] == [["p1", "player"], ["p2", "spectator"]]
    assert mine[0]["env_name"] == "env", "the datalog params carry the defaulted environment name"
    assert mine[0]["user_id"] == "conformance", "user-id metadata = StartTrial user_id"
    samples = [entry for entry in mine if entry["kind"] == "sample"]
    assert not [sample for sample in samples if sample["out_of_sync"]]
    # max_steps = 10: action sets for ticks 0..10, final observation tick 11 -> 12 samples (§3.5).
    assert_consecutive([sample["tick"] for sample in samples], 0, 11, "datalog samples")
    assert all(sample["nb_actions"] == 2 for sample in samples), [sample["nb_actions"] for sample in samples]
    assert all("actions_error" not in sample for sample in samples)
    assert all(sample["has_observations"] for sample in samples)
    states = [sample["state"] for sample in samples]
    assert states[-1] == "ENDED" and "ENDED" not in states[:-1], states
    assert states[:10] == ["RUNNING"] * 10 and states[10] == "TERMINATING", \
        f"sample t carries the state when sample t+1 was created (§5.2): {states}"
    assert "Maximum number of steps reached" in samples[10]["events"], samples[10]["events"]
    for sample in samples[:11]:
        tick = sample["tick"]
        assert [(action["status"], action["tick"], action["value"]) for action in sample["actions"]] == \
            [("ACTIVE", tick, observation_value(tick, index) + 1) for index in range(2)], sample


async def test_nb_buffered_ticks_delays_samples(sdk, components):
    """§10 #18: with nb_buffered_ticks=5 the first sample arrives only after tick 4 has started."""
    comp = await components()
    params = trial_params(comp.endpoint, two_actors(comp.endpoint), max_steps=6, datalog_endpoint=comp.endpoint,
                          nb_buffered_ticks=5, env_config={"obs_delay": 0.15})
    trial_id = await sdk.start_trial(params, "sc18-buffered")
    await sdk.wait_state(trial_id, "ENDED", 20, lambda: comp.records)
    records = await comp.wait_for(lambda recs: loop_end(recs, trial_id, "datalog"), 5, "datalog end", trial_id)
    produced = {entry["tick"]: entry["t"] for entry in select(records, trial=trial_id, role="env", kind="produced")}
    samples = select(records, trial=trial_id, role="datalog", kind="sample")
    assert_consecutive([sample["tick"] for sample in samples], 0, 7, "datalog samples")
    assert samples[0]["t"] > produced[4], (
        f"sample 0 arrived {samples[0]['t'] - produced[0]:.2f} s after tick 0, but tick 4's observations were "
        f"produced only {produced[4] - produced[0]:.2f} s after tick 0")
    assert samples[-1]["state"] == "ENDED"


# ----------------------------------------------------------------------------------------- end to end


async def _trial_info_from_datastore(datastore, trial_id: str, timeout: float, until_state: str | None = None):
    deadline = time.monotonic() + timeout
    while True:
        infos = await asyncio.wait_for(datastore.get_trials([trial_id]), 5)
        if infos and (until_state is None or infos[0].trial_state.name == until_state):
            return infos[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"datastore get_trials([{trial_id!r}]) -> {[str(info) for info in infos]} "
                                 f"after {timeout} s (wanted state {until_state})")
        await asyncio.sleep(0.05)


async def test_datastore_as_datalog_end_to_end(sdk, components, services):
    """Trial with datalog_endpoint = the services endpoint; the SDK Datastore then returns every sample of
    the ended trial (one per tick, with observations, actions and rewards) and streams a live one."""
    comp = await components(serve=("env", "actors"))
    datastore = sdk.context.get_datastore(cogment.Endpoint(services.endpoint))

    rewards = [{"to": ["*"], "value": 1.0, "confidence": 1.0}]
    params = trial_params(comp.endpoint, two_actors(comp.endpoint), datalog_endpoint=services.endpoint,
                          env_config={"end_after": 10, "rewards": rewards})
    trial_id = await sdk.start_trial(params, "e2e-datastore-ended")
    await sdk.wait_state(trial_id, "ENDED", 20, lambda: comp.records)
    info = await _trial_info_from_datastore(datastore, trial_id, 5, "ENDED")
    assert info.sample_count == 11, f"final tick 10 -> 11 samples, datastore says {info.sample_count}"

    async def collect(infos):
        return [sample async for sample in datastore.all_samples(infos)]

    samples = await asyncio.wait_for(collect([info]), 10)
    assert_consecutive([sample.tick_id for sample in samples], 0, 10, "datastore samples")
    assert samples[-1].trial_state == cogment.TrialState.ENDED
    for sample in samples:
        assert sorted(sample.actors_data) == ["p1", "p2"]
        for index, name in enumerate(["p1", "p2"]):
            data = sample.actors_data[name]
            assert data.observation.value == observation_value(sample.tick_id, index), str(data)
            if sample.tick_id < 10:
                assert data.action.value == observation_value(sample.tick_id, index) + 1, str(data)
                assert data.reward == 1.0, f"tick {sample.tick_id} {name}: reward {data.reward}"

    # Live: read while the trial runs; the stream completes when the trial ends.
    live_params = trial_params(comp.endpoint, two_actors(comp.endpoint), datalog_endpoint=services.endpoint,
                               env_config={"end_after": 30, "obs_delay": 0.05})
    live_id = await sdk.start_trial(live_params, "e2e-datastore-live")
    live_info = await _trial_info_from_datastore(datastore, live_id, 3)
    received: list[tuple[int, float]] = []

    async def follow():
        async for sample in datastore.all_samples([live_info]):
            received.append((sample.tick_id, time.monotonic()))

    await asyncio.wait_for(follow(), 20)
    ended = await sdk.wait_state(live_id, "ENDED", 5)
    assert_consecutive([tick for tick, _ in received], 0, 30, "live datastore samples")
    assert received[0][1] < ended, "the first sample should be streamed while the trial is still running"
