"""The messages a tab may send, checked before anything uses them.

A tab sends small JSON text messages, each a *full state* rather than an event, so that a dropped
message is repaired by the next one (the page also repeats its state twice a second):

- ``{"t": "input", "a": ACTION_OR_NULL, "p": PAUSED, "ok": APPROVING}``: the action of the key
  held (null: none, i.e. NO-OP), whether the teacher paused the trial and whether it holds the
  approve key (an explicit approval of the agent's action; ``"ok"`` may be left out: false);
- ``{"t": "claim"}``: an observer takes the teacher's seat while it is free.

Anything else is malformed. Nothing here raises to the caller: a bad message is a counted drop.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

MAX_MESSAGE_CHARS = 256


@dataclass(frozen=True)
class TeacherInput:
    action: int | None
    paused: bool
    approving: bool = False  # the approve key is held (an action held wins: it takes over)


@dataclass(frozen=True)
class Claim:
    pass


ClientMessage = TeacherInput | Claim


def parse_message(text: str | bytes | None) -> ClientMessage | None:
    """The message, or None when it is malformed (binary, too long, not one of the shapes above)."""
    if not isinstance(text, str) or len(text) > MAX_MESSAGE_CHARS:
        return None
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    kind = raw.get("t")
    if kind == "claim":
        return Claim()
    if kind == "input":
        action, paused, approving = raw.get("a"), raw.get("p", False), raw.get("ok", False)
        if action is not None and (not isinstance(action, int) or isinstance(action, bool)):
            return None
        if not isinstance(paused, bool) or not isinstance(approving, bool):
            return None
        return TeacherInput(action, paused, approving)
    return None


class RateLimiter:
    """A token bucket: ``rate`` messages per second on average, bursts of ``burst``.

    A person changes keys a few times a second; more than one message per step is a flood.
    """

    def __init__(self, rate: float, burst: float, clock=time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._last = burst, clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
