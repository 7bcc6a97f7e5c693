"""Self-checks of the conformance harness (they do not need the orchestrator).

The component process must serve the SDK services on its port, and the scripted SDK implementations
must record what a correct orchestrator would make them see. A tiny lockstep driver written here with
raw gRPC stubs plays the orchestrator for a few ticks (protocol notes §3.3-§3.8, §4.1, §4.2).
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from cogment.api import agent_pb2_grpc, common_pb2, datalog_pb2_grpc, environment_pb2, environment_pb2_grpc
from google.protobuf import wrappers_pb2

from conformance.harness import action_set_events, address_of, loop_end, observation_events

NORMAL = common_pb2.CommunicationState.NORMAL
LAST = common_pb2.CommunicationState.LAST
LAST_ACK = common_pb2.CommunicationState.LAST_ACK
END = common_pb2.CommunicationState.END

pytestmark = pytest.mark.timeout(60)


async def test_components_process_serves_sdk_services(components):
    process = await components("harness")
    async with grpc.aio.insecure_channel(address_of(process.endpoint)) as channel:
        for stub in (agent_pb2_grpc.ServiceActorSPStub(channel), environment_pb2_grpc.EnvironmentSPStub(channel),
                     datalog_pb2_grpc.DatalogSPStub(channel)):
            info = await asyncio.wait_for(stub.Version(common_pb2.VersionRequest()), 5)
            assert "cogment_sdk" in {version.name for version in info.versions}
            status = await asyncio.wait_for(stub.Status(common_pb2.StatusRequest(names=["*"])), 5)
            assert "overall_load" in status.statuses
    assert process.records[0]["kind"] == "serving"


async def test_scripted_components_under_a_minimal_driver(components):
    """Drive the scripted env (ends itself after 3 action sets) and one scripted actor by hand."""
    process = await components("driven", serve=("env", "actors"))
    trial_id = "harness-trial"
    metadata = (("trial-id", trial_id),)
    async with grpc.aio.insecure_channel(address_of(process.endpoint)) as channel:
        actor_call = agent_pb2_grpc.ServiceActorSPStub(channel).RunTrial(metadata=metadata)
        await actor_call.write(common_pb2.ActorRunTrialInput(state=NORMAL, init_input=common_pb2.ActorInitialInput(
            actor_name="p1", actor_class="player", impl_name="scripted", env_name="env")))
        reply = await asyncio.wait_for(actor_call.read(), 5)
        assert reply.HasField("init_output")

        env_call = environment_pb2_grpc.EnvironmentSPStub(channel).RunTrial(metadata=metadata)
        config = wrappers_pb2.StringValue(value=json.dumps({"end_after": 3, "rewards": [
            {"to": ["p1"], "value": 1.0, "confidence": 1.0}]}))
        await env_call.write(environment_pb2.EnvRunTrialInput(state=NORMAL, init_input=environment_pb2.EnvInitialInput(
            name="env", impl_name="scripted", tick_id=0,
            actors_in_trial=[common_pb2.TrialActor(name="p1", actor_class="player")],
            config=common_pb2.SerializedMessage(content=config.SerializeToString()))))
        reply = await asyncio.wait_for(env_call.read(), 5)
        assert reply.HasField("init_output")
        reply = await asyncio.wait_for(env_call.read(), 5)
        assert reply.HasField("observation_set")

        tick = 0
        env_last = False
        while True:
            obs_set = reply.observation_set
            content = obs_set.observations[obs_set.actors_map[0]]
            if env_last:
                await actor_call.write(common_pb2.ActorRunTrialInput(state=LAST))
            await actor_call.write(common_pb2.ActorRunTrialInput(
                state=NORMAL, observation=common_pb2.Observation(tick_id=tick, content=content)))
            if env_last:
                break
            action = await asyncio.wait_for(actor_call.read(), 5)
            assert action.HasField("action"), action
            await env_call.write(environment_pb2.EnvRunTrialInput(
                state=NORMAL, action_set=environment_pb2.ActionSet(tick_id=tick, actions=[action.action.content])))
            while True:
                reply = await asyncio.wait_for(env_call.read(), 5)
                if reply.state == LAST:
                    env_last = True
                    continue
                if reply.HasField("observation_set"):
                    break
                assert reply.HasField("reward"), reply
                await actor_call.write(common_pb2.ActorRunTrialInput(state=NORMAL, reward=common_pb2.Reward(
                    tick_id=tick, receiver_name="p1", value=1.0, sources=reply.reward.sources)))
            tick += 1
        ack = await asyncio.wait_for(env_call.read(), 5)
        assert ack.state == LAST_ACK
        ack = await asyncio.wait_for(actor_call.read(), 5)
        assert ack.state == LAST_ACK
        await env_call.write(environment_pb2.EnvRunTrialInput(state=END))
        await actor_call.write(common_pb2.ActorRunTrialInput(state=END))
        await env_call.done_writing()
        await actor_call.done_writing()
        assert await asyncio.wait_for(env_call.code(), 5) == grpc.StatusCode.OK
        assert await asyncio.wait_for(actor_call.code(), 5) == grpc.StatusCode.OK

    records = await process.wait_for(lambda recs: loop_end(recs, trial_id, "actor", "p1")
                                     and loop_end(recs, trial_id, "env"), 5, "loop ends", trial_id)
    observations = observation_events(records, trial_id, "p1")
    assert [(entry["type"], entry["obs"]["tick"], entry["obs"]["value"]) for entry in observations] == [
        ("ACTIVE", 0, 0), ("ACTIVE", 1, 1000), ("ACTIVE", 2, 2000), ("ENDING", 3, 3000)]
    assert loop_end(records, trial_id, "actor", "p1")["final"] is True
    action_sets = action_set_events(records, trial_id)
    assert [(entry["actions"][0]["tick"], entry["actions"][0]["value"]) for entry in action_sets] == [
        (0, 1), (1, 1001), (2, 2001)]
    assert loop_end(records, trial_id, "env")["final"] is True
    rewards = [entry for entry in records if entry.get("rewards")]
    assert [entry["rewards"][0]["sources"][0]["sender"] for entry in rewards] == ["env"] * 3
