"""The agent's request for help as the page plays it: asking, answered, or timed out.

A player that may ask (``apprentice.help``) says in its action whether it asks; the teacher learns
it one step later, from ``Observation.last_player_action`` (Cogment actors act on the same
observation at once). A request is a run of consecutive asked steps. While it waits for an answer
the trial slows down (``help_steps_per_second``) so that a person has time to look; the teacher
answers by acting (a key held: a demonstration, or the approve key: an explicit approval). A
request with no answer within ``help_timeout`` seconds times out: the agent's own action plays and
the trial goes back to its normal pace for the rest of the request, so an absent teacher never
stalls a trial. The rule (``apprentice.teaching``) records those steps as asked and unanswered.

A teacher who stops acting while the agent still asks leaves a request unanswered again: the page
waits for an answer anew (with a timeout of its own), so that every asked step is either answered or
visibly left alone.
"""

from __future__ import annotations

import enum
import math

DEFAULT_HELP_TIMEOUT = 5.0  # seconds (web.help_timeout)


class RequestState(enum.StrEnum):
    NONE = "none"  # the agent did not ask at its last step
    ASKING = "asking"  # it asks and nobody has answered yet: the trial goes at the help pace
    ANSWERED = "answered"  # it asks and the teacher acts (takes over or approves)
    TIMED_OUT = "timed_out"  # nobody answered within the timeout: the agent plays on at the normal pace


# A timed-out request never slows the trial again, and only a request still waiting can time out.
TRANSITIONS: dict[RequestState, frozenset[RequestState]] = {
    RequestState.NONE: frozenset({RequestState.ASKING, RequestState.ANSWERED}),
    RequestState.ASKING: frozenset({RequestState.NONE, RequestState.ANSWERED, RequestState.TIMED_OUT}),
    RequestState.ANSWERED: frozenset({RequestState.NONE, RequestState.ASKING}),
    RequestState.TIMED_OUT: frozenset({RequestState.NONE, RequestState.ANSWERED}),
}


class IllegalTransition(RuntimeError):
    pass


class HelpRequest:
    """The request of the trial being played, stepped once per observation by the teacher actor."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.state = RequestState.NONE
        self.deadline = math.inf  # when the request waiting for an answer times out (loop clock)

    def _move(self, state: RequestState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"a request for help cannot go from {self.state} to {state}")
        self.state = state

    def observe(self, asked: bool, answered: bool, now: float) -> None:
        """The agent's previous step: whether it asked, and whether the teacher acted at that step."""
        if not asked:
            target = RequestState.NONE
        elif answered:
            target = RequestState.ANSWERED
        elif self.state in (RequestState.NONE, RequestState.ANSWERED):
            target = RequestState.ASKING
            self.deadline = now + self.timeout
        else:
            return  # still waiting, or timed out: it stays so for the rest of the request
        if target is not self.state:
            self._move(target)

    def waiting(self) -> bool:
        """Whether the trial should go at the help pace (a request waits for its answer)."""
        return self.state is RequestState.ASKING

    def expire(self, now: float) -> bool:
        """Time the request out if its deadline has passed; True when it just timed out."""
        if self.state is not RequestState.ASKING or now < self.deadline:
            return False
        self._move(RequestState.TIMED_OUT)
        return True

    def postpone(self, seconds: float) -> None:
        """The trial was paused: a pause is the teacher looking, not the request going unanswered."""
        self.deadline += seconds


def help_pace(steps_per_second: float, help_steps_per_second: float | None, help_timeout: float) -> tuple[float, float]:
    """``web.help_steps_per_second`` (None: a third of ``steps_per_second``) and ``web.help_timeout``, checked.

    Raises ValueError naming the setting and what to give. ``steps_per_second`` 0 (unpaced) stays unpaced.
    """
    if isinstance(help_timeout, bool) or not isinstance(help_timeout, int | float) or not 0 < help_timeout < math.inf:
        raise ValueError(
            f"web.help_timeout={help_timeout!r} (--help-timeout): give the seconds a request for help waits for an answer "
            "before the agent plays on, a number > 0, e.g. web.help_timeout=5"
        )
    if help_steps_per_second is None:
        return steps_per_second / 3, float(help_timeout)
    valid = not isinstance(help_steps_per_second, bool) and isinstance(help_steps_per_second, int | float)
    if not valid or not 0 < help_steps_per_second <= (steps_per_second if steps_per_second > 0 else math.inf):
        raise ValueError(
            f"web.help_steps_per_second={help_steps_per_second!r} (--help-steps-per-second): give the pace while the agent asks "
            f"for help, a number > 0 and at most web.steps_per_second={steps_per_second:g}, e.g. web.help_steps_per_second=10, "
            "or null for a third of web.steps_per_second"
        )
    return float(help_steps_per_second), float(help_timeout)
