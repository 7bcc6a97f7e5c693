"""DatalogSample (what the orchestrator logs) → StoredTrialSample (what the datastore serves).

The rules are those of the official Go datastore (protocol notes §6.1):

* one ``StoredTrialActorSample`` per actor of the trial params, in params order;
* every observation, action, reward user data and message payload goes into ``payloads`` and is
  referenced by its index there;
* rewards are resolved against the actors (``*``, ``*.*``, ``class.*``, ``class.name``, exact name);
  a sender that is not an actor (the environment) is ``-1``;
* messages only resolve exact actor names; anything else (environment, wildcard) is ``-1``.

As in the Go datastore, reward user data and message payloads store the ``value`` bytes of the
``Any``, not the whole ``Any``.

A converter is built once per datalog stream so that name lookups are precomputed: this runs for
every tick of every trial on the service's event loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from cogment.api import common_pb2, datalog_pb2, trial_datastore_pb2


class ConversionError(ValueError):
    """The sample does not fit the trial params it is logged against."""


ENVIRONMENT = -1  # sender/receiver index of anything that is not an actor


class SampleConverter:
    """Converts the DatalogSamples of one trial, given its TrialParams."""

    def __init__(self, trial_id: str, params: common_pb2.TrialParams) -> None:
        self.trial_id = trial_id
        self._actor_count = len(params.actors)
        self._classes = [actor.actor_class for actor in params.actors]
        self._names = [actor.name for actor in params.actors]
        # First occurrence wins if a name is duplicated (the orchestrator rejects such params).
        self._index_by_name: dict[str, int] = {}
        for index, name in enumerate(self._names):
            self._index_by_name.setdefault(name, index)
        self._receivers_cache: dict[str, tuple[int, ...]] = {}

    def convert(self, sample: datalog_pb2.DatalogSample) -> trial_datastore_pb2.StoredTrialSample:
        info = sample.info
        stored = trial_datastore_pb2.StoredTrialSample(
            trial_id=self.trial_id,
            tick_id=info.tick_id,
            timestamp=info.timestamp,
            state=info.state,
        )
        actors = [stored.actor_samples.add(actor=index) for index in range(self._actor_count)]
        payloads = stored.payloads
        if sample.HasField("observations"):
            self._add_observations(sample.observations, actors, payloads)
        if len(sample.actions) > self._actor_count:
            raise ConversionError(
                f"sample of tick {info.tick_id} has {len(sample.actions)} actions but the trial params "
                f"list {self._actor_count} actors; send exactly one action per actor, in params order"
            )
        for index, action in enumerate(sample.actions):
            actors[index].action = len(payloads)
            payloads.append(action.content)
        if sample.rewards:
            self._add_rewards(sample.rewards, actors, payloads)
        for message in sample.messages:
            self._add_message(message, actors, payloads)
        return stored

    def _add_observations(self, observations, actors: Sequence, payloads) -> None:
        if len(observations.actors_map) > self._actor_count:
            raise ConversionError(
                f"observation set maps {len(observations.actors_map)} actors but the trial params list "
                f"{self._actor_count}; actors_map needs one entry per actor, in params order"
            )
        first_payload = len(payloads)
        payloads.extend(observations.observations)
        observation_count = len(observations.observations)
        for actor_index, observation_index in enumerate(observations.actors_map):
            # Unavailable actors may have an undefined entry: such an actor simply gets no observation.
            if 0 <= observation_index < observation_count:
                actors[actor_index].observation = first_payload + observation_index

    def _add_rewards(self, rewards, actors: Sequence, payloads) -> None:
        sources_by_receiver: dict[int, list[common_pb2.RewardSource]] = {}
        for reward in rewards:
            receivers = self._reward_receivers(reward.receiver_name)
            if not receivers:
                continue  # unknown receiver: the orchestrator could not deliver it either
            # Each source's user data is stored once, even when the reward goes to several actors.
            user_data_indexes: list[int | None] = []
            for source in reward.sources:
                if source.HasField("user_data") and source.user_data.value:
                    user_data_indexes.append(len(payloads))
                    payloads.append(source.user_data.value)
                else:
                    user_data_indexes.append(None)
            for receiver in receivers:
                received = sources_by_receiver.setdefault(receiver, [])
                for source, user_data in zip(reward.sources, user_data_indexes):
                    received.append(source)
                    sender = self._index_by_name.get(source.sender_name, ENVIRONMENT)
                    entry = actors[receiver].received_rewards.add(
                        sender=sender, reward=source.value, confidence=source.confidence
                    )
                    if user_data is not None:
                        entry.user_data = user_data
                    if sender != ENVIRONMENT:
                        entry = actors[sender].sent_rewards.add(
                            receiver=receiver, reward=source.value, confidence=source.confidence
                        )
                        if user_data is not None:
                            entry.user_data = user_data
        for receiver, sources in sources_by_receiver.items():
            actors[receiver].reward = aggregate_reward(sources)

    def _add_message(self, message: common_pb2.Message, actors: Sequence, payloads) -> None:
        payload = len(payloads)
        payloads.append(message.payload.value)
        sender = self._index_by_name.get(message.sender_name, ENVIRONMENT)
        receiver = self._index_by_name.get(message.receiver_name, ENVIRONMENT)
        if receiver != ENVIRONMENT:
            actors[receiver].received_messages.add(sender=sender, payload=payload)
        if sender != ENVIRONMENT:
            actors[sender].sent_messages.add(receiver=receiver, payload=payload)

    def _reward_receivers(self, pattern: str) -> tuple[int, ...]:
        receivers = self._receivers_cache.get(pattern)
        if receivers is None:
            receivers = self._receivers_cache[pattern] = self._resolve_receivers(pattern)
        return receivers

    def _resolve_receivers(self, pattern: str) -> tuple[int, ...]:
        """Actor indexes a reward receiver pattern designates.

        An exact actor name wins over the ``class.name`` reading, as in the orchestrator, so that
        actor names containing a dot still work.
        """
        if pattern in ("*", "*.*"):
            return tuple(range(self._actor_count))
        if pattern in self._index_by_name:
            return (self._index_by_name[pattern],)
        actor_class, dot, name = pattern.partition(".")
        if not dot:
            return ()
        return tuple(
            index
            for index, (class_, name_) in enumerate(zip(self._classes, self._names))
            if class_ == actor_class and name in ("*", name_)
        )


def aggregate_reward(sources: Sequence[common_pb2.RewardSource]) -> float:
    """Confidence-weighted mean over sources with positive confidence; 0.0 when there are none."""
    total = 0.0
    confidence = 0.0
    for source in sources:
        if source.confidence > 0:
            total += source.value * source.confidence
            confidence += source.confidence
    return total / confidence if confidence > 0 else 0.0
