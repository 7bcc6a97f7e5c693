"""Scripted Cogment implementations (environment, actor, datalog) that report what they see.

The same functions run inside a component process (``conformance.components``, records written as
JSON lines to a file) and inside the test process (client actors joining with ``join_trial``, records
kept in a list). Behaviour is chosen per trial through the JSON document carried by the environment
and actor configs (``StringValue``, see ``cog_settings``), so one component process can serve every
kind of trial.

Environment config keys (all optional):
    end_after      int    call ``end()`` (final observations) after this many action sets
    start_delay    float  seconds to wait before ``start()`` (keeps the trial PENDING that long)
    obs_delay      float  seconds to wait before producing each next observation set
    rewards        list   [{"to": [...], "value": v, "confidence": c, "ticks": [..]|None, "every": k}]
                          sent after receiving the action set of tick t (so attributed to tick t)
    messages       list   [{"to": [...], "ticks": [..]|None, "every": k}], sent like rewards;
                          payload ``StringValue("env@<t>")``
    late_rewards   list   [{"to": [...], "value": v, "confidence": c, "lag": k}]: after the action set of
                          tick t, a reward explicitly addressed to the past tick t - k

Actor config keys (all optional):
    silent         bool   never act
    silent_from    int    stop acting from this observation tick on
    return_after   int    return from the implementation on the observation of this tick, without acting
    exit_after     int    ``os._exit(3)`` on the observation of this tick (a crash)
    delay          float  seconds to wait before acting
    rewards        list   [{"to": [...], "value": v, "confidence": c, "every": k}] sent on each ACTIVE
                          observation, before acting
    messages       list   [{"to": [...], "every": k}] sent on each ACTIVE observation, before acting;
                          payload ``StringValue("<name>@<t>")``

Observations are ``Int64Value(tick * 1000 + actor_index)``; actions are ``Int64Value(observation + 1)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import cogment
from google.protobuf import wrappers_pb2

Record = Callable[[dict[str, Any]], None]

OBS_TICK_FACTOR = 1000


def observation_value(tick: int, actor_index: int) -> int:
    return tick * OBS_TICK_FACTOR + actor_index


def _config_dict(config) -> dict[str, Any]:
    if config is None or not config.value:
        return {}
    return json.loads(config.value)


def _selected(spec: dict[str, Any], tick: int) -> bool:
    ticks = spec.get("ticks")
    if ticks is not None and tick not in ticks:
        return False
    every = spec.get("every")
    return not (every and tick % every != 0)


def _payload_text(payload) -> str | None:
    if payload is None:
        return None
    text = wrappers_pb2.StringValue()
    if payload.Is(text.DESCRIPTOR):
        payload.Unpack(text)
        return text.value
    return f"<{payload.type_url}>"


def _rewards_of(event) -> list[dict[str, Any]]:
    result = []
    for reward in event.rewards:
        sources = []
        if reward.get_nb_sources() > 0:
            for source in reward.all_sources():
                sources.append(
                    {"sender": source.sender_name, "value": source.value, "confidence": source.confidence}
                )
        result.append(
            {"tick": reward.tick_id, "value": reward.value, "receiver": reward.receiver_name, "sources": sources}
        )
    return result


def _messages_of(event) -> list[dict[str, Any]]:
    return [
        {
            "tick": message.tick_id,
            "sender": message.sender_name,
            "receiver": message.receiver_name,
            "text": _payload_text(message.payload),
        }
        for message in event.messages
    ]


def make_actor_impl(record: Record):
    """An actor implementation (service or client) driven by its actor config."""

    async def scripted_actor(session: cogment.ActorSession) -> None:
        trial_id = session.get_trial_id()
        config = _config_dict(session.config)
        base = {"role": "actor", "trial": trial_id, "name": session.name}
        record({**base, "kind": "init", "class": session.actor_class, "impl": session.impl_name,
                "env_name": session.env_name, "config": config, "t": time.time()})
        session.start()
        last_type = None
        async for event in session.all_events():
            last_type = event.type.name
            entry = {**base, "kind": "event", "type": event.type.name, "t": time.time()}
            if event.observation is not None:
                entry["obs"] = {"tick": event.observation.tick_id, "value": event.observation.observation.value}
            if event.rewards:
                entry["rewards"] = _rewards_of(event)
            if event.messages:
                entry["messages"] = _messages_of(event)
            record(entry)

            if event.observation is None or event.type != cogment.EventType.ACTIVE:
                continue
            tick = event.observation.tick_id
            if config.get("exit_after") is not None and tick >= config["exit_after"]:
                record({**base, "kind": "crash", "tick": tick, "t": time.time()})
                os._exit(3)
            if config.get("return_after") is not None and tick >= config["return_after"]:
                record({**base, "kind": "loop_end", "final": False, "reason": "returned_early",
                        "tick": tick, "t": time.time()})
                return
            for spec in config.get("rewards", []):
                if _selected(spec, tick):
                    session.add_reward(value=spec["value"], confidence=spec.get("confidence", 1.0), to=spec["to"])
            for spec in config.get("messages", []):
                if _selected(spec, tick):
                    session.send_message(wrappers_pb2.StringValue(value=f"{session.name}@{tick}"), spec["to"])
            if config.get("silent"):
                continue
            if config.get("silent_from") is not None and tick >= config["silent_from"]:
                continue
            if config.get("delay"):
                await asyncio.sleep(config["delay"])
            session.do_action(wrappers_pb2.Int64Value(value=event.observation.observation.value + 1))

        record({**base, "kind": "loop_end", "final": last_type == "FINAL", "reason": "events_ended",
                "t": time.time()})

    return scripted_actor


def make_env_impl(record: Record):
    """An environment implementation driven by its environment config."""

    async def scripted_environment(session: cogment.EnvironmentSession) -> None:
        trial_id = session.get_trial_id()
        config = _config_dict(session.config)
        actors = [(actor.actor_name, actor.actor_class_name) for actor in session.get_active_actors()]
        base = {"role": "env", "trial": trial_id, "name": session.name}
        record({**base, "kind": "init", "impl": session.impl_name, "actors": actors, "config": config,
                "t": time.time()})

        def observations(tick: int):
            return [(name, wrappers_pb2.Int64Value(value=observation_value(tick, index)))
                    for index, (name, _) in enumerate(actors)]

        if config.get("start_delay"):
            await asyncio.sleep(config["start_delay"])
        record({**base, "kind": "produced", "tick": 0, "final": False, "t": time.time()})
        session.start(observations(0))

        action_sets = 0
        last_type = None
        async for event in session.all_events():
            last_type = event.type.name
            entry = {**base, "kind": "event", "type": event.type.name, "t": time.time()}
            if event.actions:
                entry["actions"] = [
                    {
                        "index": action.actor_index,
                        "tick": action.tick_id,
                        "status": action.status.name,
                        "value": None if action.action is None else action.action.value,
                    }
                    for action in event.actions
                ]
            if event.messages:
                entry["messages"] = _messages_of(event)
            record(entry)

            if not event.actions or event.type == cogment.EventType.FINAL:
                continue
            tick = event.actions[0].tick_id
            action_sets += 1
            for spec in config.get("rewards", []):
                if _selected(spec, tick):
                    session.add_reward(value=spec["value"], confidence=spec.get("confidence", 1.0), to=spec["to"])
            for spec in config.get("messages", []):
                if _selected(spec, tick):
                    session.send_message(wrappers_pb2.StringValue(value=f"{session.name}@{tick}"), spec["to"])
            for spec in config.get("late_rewards", []):
                late_tick = tick - spec.get("lag", 1)
                if late_tick >= 0:
                    session.add_reward(value=spec["value"], confidence=spec.get("confidence", 1.0), to=spec["to"],
                                       tick_id=late_tick)

            if event.type == cogment.EventType.ENDING:
                record({**base, "kind": "produced", "tick": action_sets, "final": True, "t": time.time()})
                session.produce_observations(observations(action_sets))
            elif config.get("end_after") is not None and action_sets >= config["end_after"]:
                record({**base, "kind": "produced", "tick": action_sets, "final": True, "t": time.time()})
                session.end(observations(action_sets))
            else:
                if config.get("obs_delay"):
                    await asyncio.sleep(config["obs_delay"])
                record({**base, "kind": "produced", "tick": action_sets, "final": False, "t": time.time()})
                session.produce_observations(observations(action_sets))

        record({**base, "kind": "loop_end", "final": last_type == "FINAL", "action_sets": action_sets,
                "t": time.time()})

    return scripted_environment


def make_datalog_impl(record: Record):
    """A datalog that reports the trial params and a summary of every sample."""

    async def scripted_datalog(session) -> None:
        params = session.trial_parameters
        base = {"role": "datalog", "trial": session.trial_id}
        record({
            **base, "kind": "params", "user_id": session.user_id,
            "actors": [(actor.name, actor.actor_class) for actor in params.actors],
            "env_name": params.environment_name, "max_steps": params.max_steps,
            "nb_buffered_ticks": params.nb_buffered_ticks, "t": time.time(),
        })
        nb_actors = len(params.actors)
        session.start()
        async for sample in session.all_samples():
            raw = sample._raw_sample
            entry = {
                **base, "kind": "sample", "t": time.time(),
                "tick": sample.tick_id,
                "state": None if sample.state is None else sample.state.name,
                "out_of_sync": sample.out_of_sync,
                "events": list(sample.events or []),
                "nb_actions": len(raw.actions),
                "default_actors": list(raw.default_actors),
                "unavailable_actors": list(raw.unavailable_actors),
                "has_observations": raw.HasField("observations"),
                "nb_rewards": len(raw.rewards),
                "nb_messages": len(raw.messages),
            }
            try:
                statuses = []
                for index in range(nb_actors):
                    action = sample.get_action(index)
                    statuses.append(None if action is None else
                                    {"status": action.status.name, "tick": action.tick_id,
                                     "value": None if action.action is None else action.action.value})
                entry["actions"] = statuses
            except Exception as error:  # noqa: BLE001 - reported, checked by the tests
                entry["actions_error"] = repr(error)
            record(entry)
        record({**base, "kind": "loop_end", "t": time.time()})

    return scripted_datalog


class FileRecorder:
    """Appends one JSON line per record and flushes it at once (the tests read the file live)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def __call__(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()


class ListRecorder:
    """Keeps records in memory (client actors running in the test process)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __call__(self, entry: dict[str, Any]) -> None:
        self.records.append(entry)
