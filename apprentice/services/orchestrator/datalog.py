"""The samples of one trial, from the tick they start to the datalog service.

Each tick gets one DatalogSample. The last ``nb_buffered_ticks - 1`` samples stay in memory so that
a reward arriving late (addressed to an old tick) still joins its own sample; older samples go to
the DatalogSP stream. At the end of the trial every remaining sample is sent, the last one marked
ENDED, which tells the datastore and the SDK datalog that the trial is complete.
"""

from __future__ import annotations

import collections
import logging
import time

from cogment.api import common_pb2, datalog_pb2

from apprentice.services.orchestrator.streams import Connection

log = logging.getLogger(__name__)

NO_ACTION_TICK = -2  # placeholder action of an actor that did not act, as the official orchestrator logs it
EXCLUDABLE_FIELDS = {
    "info",
    "observations",
    "actions",
    "rewards",
    "messages",
    "default_actors",
    "unavailable_actors",
}


class TrialDatalog:
    """Builds, buffers and sends the samples of one trial (sending only when a datalog is connected)."""

    def __init__(
        self,
        actor_count: int,
        nb_buffered_ticks: int,
        exclude_fields: list[str],
        connection: Connection | None = None,
    ) -> None:
        self.actor_count = actor_count
        self.nb_buffered_ticks = nb_buffered_ticks
        self.excluded = [name.lower() for name in exclude_fields if name.lower() in EXCLUDABLE_FIELDS]
        self.connection = connection
        self.samples: collections.deque[datalog_pb2.DatalogSample] = collections.deque()
        self.new_sample(tick_id=0, timestamp=time.time_ns())

    @property
    def current(self) -> datalog_pb2.DatalogSample:
        return self.samples[-1]

    def new_sample(self, tick_id: int, timestamp: int) -> datalog_pb2.DatalogSample:
        sample = datalog_pb2.DatalogSample()
        sample.info.tick_id = tick_id
        sample.info.timestamp = timestamp
        for _ in range(self.actor_count):
            sample.actions.add(tick_id=NO_ACTION_TICK)
        self.samples.append(sample)
        return sample

    def add_reward(self, reward: common_pb2.Reward, tick_id: int) -> None:
        """Store a reward with the sample of its tick, or alone (out of sync) if that one has left."""
        for sample in reversed(self.samples):
            if sample.info.tick_id == tick_id:
                sample.rewards.append(reward)
                return
        late = datalog_pb2.DatalogSample()
        late.info.out_of_sync = True
        late.info.tick_id = tick_id
        late.info.timestamp = time.time_ns()
        late.info.special_events.append("Out of sync reward")
        late.rewards.append(reward)
        self._send(late)

    def balance(self) -> None:
        """Send the oldest samples until ``nb_buffered_ticks - 1`` remain."""
        while len(self.samples) >= self.nb_buffered_ticks:
            self._send(self.samples.popleft())

    def flush(self) -> None:
        """Send every remaining sample, the last one marked ENDED."""
        if self.samples:
            self.samples[-1].info.state = common_pb2.ENDED
        while self.samples:
            self._send(self.samples.popleft())

    def _send(self, sample: datalog_pb2.DatalogSample) -> None:
        if self.connection is None:
            return
        for field in self.excluded:
            sample.ClearField(field)
        self.connection.send(datalog_pb2.RunTrialDatalogInput(sample=sample))
