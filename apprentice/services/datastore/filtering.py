"""Actor and field selection of RetrieveSamples (protocol notes §6.2).

An actor is kept when it matches every non-empty list of the request (names, classes,
implementations, read from the trial params). With selected fields, only those fields of the kept
actors are returned. ``payloads`` keeps its length so that indexes stay valid; entries nobody
references any more are emptied, which keeps filtered replies small.
"""

from __future__ import annotations

from collections.abc import Callable

from cogment.api import common_pb2, trial_datastore_pb2

Field = trial_datastore_pb2.StoredTrialSampleField
StoredSample = trial_datastore_pb2.StoredTrialSample
SampleTransform = Callable[[StoredSample], StoredSample]


class SampleFilter:
    """The filter of one RetrieveSamples request; ``for_trial`` specialises it to a trial's params."""

    def __init__(self, request: trial_datastore_pb2.RetrieveSamplesRequest) -> None:
        self._names = set(request.actor_names)
        self._classes = set(request.actor_classes)
        self._implementations = set(request.actor_implementations)
        # None = every field. UNKNOWN selects nothing (a list of only UNKNOWN selects no field, as in Go).
        self._fields: set[int] | None = None
        if request.selected_sample_fields:
            self._fields = set(request.selected_sample_fields) - {Field.STORED_TRIAL_SAMPLE_FIELD_UNKNOWN}

    def for_trial(self, params: common_pb2.TrialParams) -> SampleTransform | None:
        """The transformation for this trial's samples, or None when everything is selected."""
        kept = frozenset(
            index
            for index, actor in enumerate(params.actors)
            if (not self._names or actor.name in self._names)
            and (not self._classes or actor.actor_class in self._classes)
            and (not self._implementations or actor.implementation in self._implementations)
        )
        if len(kept) == len(params.actors) and self._fields is None:
            return None
        fields = self._fields if self._fields is not None else set(Field.values())
        return lambda sample: _filtered(sample, kept, fields)


def _filtered(sample: StoredSample, kept: frozenset[int], fields: set[int]) -> StoredSample:
    result = StoredSample(
        user_id=sample.user_id,
        trial_id=sample.trial_id,
        tick_id=sample.tick_id,
        timestamp=sample.timestamp,
        state=sample.state,
    )
    source_payloads = sample.payloads
    payloads: list[bytes] = [b""] * len(source_payloads)

    def keep_payload(index: int) -> None:
        # Indexes come from stored data that may have been added with AddSample: never trust them.
        if 0 <= index < len(source_payloads):
            payloads[index] = source_payloads[index]

    for actor in sample.actor_samples:
        if actor.actor not in kept:
            continue
        out = result.actor_samples.add(actor=actor.actor)
        if Field.STORED_TRIAL_SAMPLE_FIELD_OBSERVATION in fields and actor.HasField("observation"):
            out.observation = actor.observation
            keep_payload(actor.observation)
        if Field.STORED_TRIAL_SAMPLE_FIELD_ACTION in fields and actor.HasField("action"):
            out.action = actor.action
            keep_payload(actor.action)
        if Field.STORED_TRIAL_SAMPLE_FIELD_REWARD in fields and actor.HasField("reward"):
            out.reward = actor.reward
        if Field.STORED_TRIAL_SAMPLE_FIELD_RECEIVED_REWARDS in fields:
            out.received_rewards.extend(actor.received_rewards)
            for reward in actor.received_rewards:
                if reward.HasField("user_data"):
                    keep_payload(reward.user_data)
        if Field.STORED_TRIAL_SAMPLE_FIELD_SENT_REWARDS in fields:
            out.sent_rewards.extend(actor.sent_rewards)
            for reward in actor.sent_rewards:
                if reward.HasField("user_data"):
                    keep_payload(reward.user_data)
        if Field.STORED_TRIAL_SAMPLE_FIELD_RECEIVED_MESSAGES in fields:
            out.received_messages.extend(actor.received_messages)
            for message in actor.received_messages:
                keep_payload(message.payload)
        if Field.STORED_TRIAL_SAMPLE_FIELD_SENT_MESSAGES in fields:
            out.sent_messages.extend(actor.sent_messages)
            for message in actor.sent_messages:
                keep_payload(message.payload)
    result.payloads.extend(payloads)
    return result
