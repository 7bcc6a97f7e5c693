"""The open tabs, their roles, the teacher's input, and what goes out to each tab.

One tab is the teacher: the first to connect, or the tab that reloads with the teacher's token
(kept in the tab's ``sessionStorage``), or an observer that claims the seat while it is free. Every
other tab is a read-only observer.

The tabs are capped (``max_tabs``): each one costs a frame per step, and a flood of them would slow
the trial. The last place is kept for the teacher: once ``max_tabs - 1`` observers are open, new
observers are refused, while the teacher's tab (or its reload, with its token) always gets in. The
seat itself is first come, first served, as ever: a tab that opens while it is free takes it.

The teacher actor (``teacher.py``) reads the input here and publishes each observation here, with
the state of the agent's request for help (``help_request.py``) and the trial's teaching figures
(how often the agent asked, how often the teacher took over, the teacher's seconds); it never
waits on a tab: each tab has its own sender that only ever sends the *latest* frame, so a
slow or stalled tab skips frames instead of slowing a trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from web.help_request import DEFAULT_HELP_TIMEOUT, RequestState, help_pace
from web.keymaps import KeyMap, as_json
from web.protocol import Claim, RateLimiter, TeacherInput, parse_message

log = logging.getLogger(__name__)

TEACHER, OBSERVER = "teacher", "observer"
MAX_HISTORY = 50  # finished trials listed on the page
DEFAULT_MAX_TABS = 32

# The page's phases (``status()["phase"]``).
RUNNING = "running"  # a trial is being played
WAITING = "waiting"  # for the run's next trial
WAITING_FOR_TEACHER = "waiting_for_teacher"  # a trial is ready and waits for a teacher's tab


class Tab:
    """One open page: its role, its rate limit, and the messages waiting to be sent to it."""

    def __init__(self, tab_id: int, token: str, limiter: RateLimiter) -> None:
        self.tab_id = tab_id
        self.token = token
        self.role = OBSERVER
        self.limiter = limiter
        self._controls: deque[str] = deque(maxlen=100)  # hello, role and history: each one matters
        self._status: dict[str, Any] | None = None  # only the latest matters
        self._frame: bytes | None = None  # only the latest matters
        self.frames_sent = 0
        self.frames_skipped = 0  # replaced by a newer one before this tab could take them
        self._wake = asyncio.Event()
        self.closed = False

    def push_control(self, message: dict[str, Any]) -> None:
        self._controls.append(json.dumps(message))
        self._wake.set()

    def push_status(self, status: dict[str, Any], frame: bytes | None = None) -> None:
        self._status = status
        if frame is not None:
            self.frames_skipped += self._frame is not None
            self._frame = frame
        self._wake.set()

    async def run_sender(self, send_text: Callable[[str], Awaitable[None]], send_bytes: Callable[[bytes], Awaitable[None]]) -> None:
        """Send what is pending, latest frame only, until the tab closes (or a send fails)."""
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            while self._controls:
                await send_text(self._controls.popleft())
            status, frame = self._status, self._frame
            self._status = self._frame = None
            if status is not None:
                # The page applies a status together with the frame that follows it: no flicker.
                await send_text(json.dumps({**status, "t": "status", "role": self.role, "frame": frame is not None}))
            if frame is not None:
                await send_bytes(frame)
                self.frames_sent += 1


@dataclass
class TrialView:
    """What the page shows of the trial being played."""

    trial_id: str
    trial_number: int | None
    env_id: str
    key_map: KeyMap
    step: int = 0
    teacher_steps: int = 0  # steps on which the teacher took over (from the observations)
    last_actor: str | None = None  # "agent" or "teacher": who acted on the previous step
    model_iteration: int | None = None  # of the model that chose the agent's last action
    total_return: float = 0.0
    request: RequestState = RequestState.NONE  # the agent's request for help, as of its last step
    asked_steps: int = 0  # steps at which the agent asked for help
    answered_steps: int = 0  # of those, the steps the teacher took over or approved
    timeouts: int = 0  # requests left unanswered for the whole help timeout
    teacher_seconds: float = 0.0  # time during which the teacher acted (a key held, or approving)
    started: float = field(default_factory=time.monotonic)
    last_observed: float = field(default_factory=time.monotonic)


class Hub:
    """Shared by the web app (tabs) and the teacher actor (trials), on one event loop."""

    def __init__(
        self,
        steps_per_second: float,
        max_tabs: int = DEFAULT_MAX_TABS,
        help_steps_per_second: float | None = None,
        help_timeout: float = DEFAULT_HELP_TIMEOUT,
    ) -> None:
        self.steps_per_second = steps_per_second
        # The pace while the agent asks for help, and how long it waits for an answer (help_request.help_pace).
        self.help_steps_per_second, self.help_timeout = help_pace(steps_per_second, help_steps_per_second, help_timeout)
        self.max_tabs = max_tabs  # the teacher's tab included
        self.tabs: dict[int, Tab] = {}
        self.teacher_tab: Tab | None = None
        self.teacher_token: str | None = None
        self._teacher_seated = asyncio.Event()  # set while a tab holds the teacher's seat
        self._waiting_for_teacher: set[str] = set()  # trials that wait for a teacher's tab to be joined
        self.dropped: Counter[str] = Counter()  # why tab messages, or tabs, were dropped
        self.orchestrator = "connecting"
        self.trial: TrialView | None = None
        self.history: list[dict[str, Any]] = []
        self.training: dict[str, Any] | None = None  # the run's model, from the registry (web.training)
        self._valid_actions: set[int] = set()
        self._held: int | None = None  # action of the key the teacher holds
        self._latched: int | None = None  # a key pressed since the last step: a short tap still counts
        self._approving = False  # the teacher holds the approve key
        self._approval_latched = False  # the approve key pressed since the last step
        self._paused = False
        self.input_changed = asyncio.Event()  # the teacher's action changed since the last step
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._step_times: deque[float] = deque(maxlen=60)
        self._next_tab_id = 0
        self._status_seq = 0  # the page never shows an older status over a newer one

    # -- tabs ----------------------------------------------------------------------------------------

    def admits(self, token: str) -> bool:
        """Whether a new tab with ``token`` may open: always as the teacher, as an observer while there is room.

        A refused tab is counted in ``dropped["too_many_tabs"]``.
        """
        would_teach = self.teacher_tab is None or (bool(token) and token == self.teacher_token)
        observers = sum(tab.role == OBSERVER for tab in self.tabs.values())
        if would_teach or observers < self.max_tabs - 1:
            return True
        self.dropped["too_many_tabs"] += 1
        return False

    def connect(self, token: str) -> Tab:
        """A new tab. It is the teacher if it is the teacher's tab reloaded, or if the seat is free."""
        self._next_tab_id += 1
        # Floods faster than the step rate are dropped (a burst absorbs a quick series of taps).
        tab = Tab(self._next_tab_id, token, RateLimiter(rate=max(self.steps_per_second, 10.0), burst=20))
        self.tabs[tab.tab_id] = tab
        if token and token == self.teacher_token and self.teacher_tab is not None:
            previous = self.teacher_tab  # the reloaded page connected before the old one closed
            previous.role = OBSERVER
            previous.push_control({"t": "role", "role": OBSERVER})
            self.teacher_tab = None
        if self.teacher_tab is None:
            self._seat(tab)
        tab.push_control(
            {
                "t": "hello",
                "role": tab.role,
                "steps_per_second": self.steps_per_second,
                "help_timeout": self.help_timeout,
                "key_map": as_json(self.trial.key_map) if self.trial else [],
                "history": self.history,
                "training": self.training,
            }
        )
        self.broadcast_status()
        return tab

    def disconnect(self, tab: Tab) -> None:
        """A tab left. Without the teacher the trial goes on with NO-OP (and never stays paused)."""
        tab.closed = True
        tab._wake.set()
        self.tabs.pop(tab.tab_id, None)
        if tab is self.teacher_tab:
            self.teacher_tab = None
            self._teacher_seated.clear()
            self._held = None  # a demonstration already received (the latch) is still played
            self._approving = False
            self._set_paused(False)
        self.broadcast_status()

    def _seat(self, tab: Tab) -> None:
        tab.role = TEACHER
        self.teacher_tab = tab
        self.teacher_token = tab.token or None
        self._teacher_seated.set()
        tab.push_control({"t": "role", "role": TEACHER})

    def teacher_present(self) -> bool:
        return self.teacher_tab is not None

    async def wait_for_teacher(self) -> None:
        """Until a tab holds the teacher's seat (at once if one does)."""
        await self._teacher_seated.wait()

    @contextlib.contextmanager
    def trial_waiting_for_teacher(self, trial_id: str) -> Iterator[None]:
        """While inside, the page says that ``trial_id`` waits for its teacher (when no teacher is seated)."""
        self._waiting_for_teacher.add(trial_id)
        self.broadcast_status()
        try:
            yield
        finally:
            self._waiting_for_teacher.discard(trial_id)
            self.broadcast_status()

    def is_waiting_for_teacher(self, trial_id: str) -> bool:
        return trial_id in self._waiting_for_teacher

    def receive(self, tab: Tab, text: str | bytes | None) -> None:
        """A message from a tab; anything unusable is dropped and counted, never raised."""
        if not tab.limiter.allow():
            self.dropped["flood"] += 1
            return
        message = parse_message(text)
        if message is None:
            self.dropped["malformed"] += 1
        elif isinstance(message, Claim):
            if self.teacher_tab is None:
                self._seat(tab)
                self.broadcast_status()
            else:
                self.dropped["claim_refused"] += 1
        elif tab is not self.teacher_tab:
            self.dropped["observer_input"] += 1
        elif message.action is not None and message.action not in self._valid_actions:
            self.dropped["unknown_action"] += 1
        else:
            self._apply(message)

    def _apply(self, message: TeacherInput) -> None:
        if message.action is not None and message.action != self._held:
            self._latched = message.action
        if message.approving and not self._approving:
            self._approval_latched = True
        if message.action != self._held or message.approving != self._approving:
            self.input_changed.set()
        self._held, self._approving = message.action, message.approving
        if message.paused != self._paused:
            self._set_paused(message.paused)
            self.broadcast_status()

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        if paused:
            self._resumed.clear()
        else:
            self._resumed.set()

    # -- the teacher actor's side ------------------------------------------------------------------

    def trial_started(self, trial_id: str, trial_number: int | None, env_id: str, num_actions: int, key_map: KeyMap) -> None:
        self.trial = TrialView(trial_id, trial_number, env_id, key_map)
        self._valid_actions = set(range(num_actions))
        self._latched = None
        self._approval_latched = False
        if self._held not in self._valid_actions:
            self._held = None  # held in another environment; the page sends its input for this one
        self._step_times.clear()
        for tab in self.tabs.values():
            tab.push_control({"t": "trial", "trial_id": trial_id, "env_id": env_id, "key_map": as_json(key_map)})
        self.broadcast_status()

    def observation(
        self,
        trial_id: str,
        step: int,
        last_step_demonstration: bool | None,
        frame: bytes | None,
        reward: float = 0.0,
        model_iteration: int | None = None,
        asked: bool = False,
        teacher_acted: bool = False,
        request: RequestState = RequestState.NONE,
    ) -> None:
        """A new observation of ``trial_id`` and what happened at the step that led to it: show it in every tab.

        ``asked``: the agent asked for help at that step; ``teacher_acted``: the teacher took over or
        approved it; ``request``: the agent's request as the teacher actor plays it from now on.
        """
        trial = self.trial
        if trial is None or trial.trial_id != trial_id:
            return  # a trial running alongside the one on screen: played, not shown
        now = time.monotonic()
        if teacher_acted:
            trial.teacher_seconds += now - trial.last_observed
        trial.last_observed = now
        trial.asked_steps += asked
        trial.answered_steps += asked and teacher_acted
        trial.request = request
        trial.step = step
        trial.total_return += reward
        if model_iteration is not None:
            trial.model_iteration = model_iteration
        if last_step_demonstration is not None:
            trial.last_actor = "teacher" if last_step_demonstration else "agent"
            trial.teacher_steps += last_step_demonstration
        self._step_times.append(now)
        self.broadcast_status(frame)

    def request_timed_out(self, trial_id: str) -> None:
        """Nobody answered the agent's request within the help timeout: it plays on."""
        trial = self.trial
        if trial is None or trial.trial_id != trial_id:
            return
        trial.request = RequestState.TIMED_OUT
        trial.timeouts += 1
        self.broadcast_status()

    def is_running(self) -> bool:
        return self._resumed.is_set()

    async def wait_until_resumed(self) -> None:
        await self._resumed.wait()

    def take_action(self) -> tuple[int | None, bool]:
        """The action for this step (the key held, else a key tapped since the last step, else None:
        NO-OP) and, when there is none, whether the teacher approves the agent's (held or tapped)."""
        action = self._held if self._held is not None else self._latched
        approving = action is None and (self._approving or self._approval_latched)
        self._latched, self._approval_latched = None, False
        self.input_changed.clear()
        return action, approving

    def trial_ended(self, trial_id: str) -> None:
        trial = self.trial
        if trial is None or trial.trial_id != trial_id:
            return
        summary = {
            "trial_id": trial.trial_id,
            "trial": trial.trial_number,
            "steps": trial.step,
            "teacher_steps": trial.teacher_steps,
            "intervention_rate": trial.teacher_steps / trial.step if trial.step else 0.0,
            "return": round(trial.total_return, 2),
            "model_iteration": trial.model_iteration,
            "seconds": round(time.monotonic() - trial.started, 1),
            **teaching_figures(trial),
            "eval_success_rate": self.latest_eval_success_rate(),
        }
        self.history = [*self.history, summary][-MAX_HISTORY:]
        self.trial = None
        self._latched = None
        self._approval_latched = False
        for tab in self.tabs.values():
            tab.push_control({"t": "ended", "summary": summary})
        self.broadcast_status()

    def latest_eval_success_rate(self) -> float | None:
        """The agent's success alone at the run's last evaluation so far (None before the first one)."""
        evaluation = (self.training or {}).get("latest_evaluation")
        return evaluation["success_rate"] if evaluation else None

    def set_training(self, training: dict[str, Any]) -> None:
        if training == self.training:
            return
        self.training = training
        for tab in self.tabs.values():
            tab.push_control({"t": "training", "training": training})

    def set_orchestrator(self, state: str) -> None:
        if state != self.orchestrator:
            self.orchestrator = state
            self.broadcast_status()

    # -- what every tab sees ---------------------------------------------------------------------------

    def steps_per_second_measured(self) -> float:
        times = self._step_times
        if len(times) < 2 or time.monotonic() - times[-1] > 1.0:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def phase(self) -> str:
        if self.trial is not None:
            return RUNNING
        if self._waiting_for_teacher and self.teacher_tab is None:
            return WAITING_FOR_TEACHER
        return WAITING

    def status(self) -> dict[str, Any]:
        trial = self.trial
        asking = trial is not None and trial.request is RequestState.ASKING
        return {
            "phase": self.phase(),
            "trial_id": trial.trial_id if trial else None,
            "trial": trial.trial_number if trial else None,
            "env_id": trial.env_id if trial else None,
            "step": trial.step if trial else None,
            "last_actor": trial.last_actor if trial else None,
            "teacher_steps": trial.teacher_steps if trial else None,
            "return": round(trial.total_return, 2) if trial else None,
            "model_iteration": trial.model_iteration if trial else None,
            "steps_per_second": round(self.steps_per_second_measured(), 1) if trial else 0.0,
            "target_steps_per_second": self.help_steps_per_second if asking else self.steps_per_second,
            "request": trial.request.value if trial else RequestState.NONE.value,
            **(teaching_figures(trial) if trial else {}),
            "paused": self._paused,
            "teacher_present": self.teacher_tab is not None,
            "observers": sum(tab.role == OBSERVER for tab in self.tabs.values()),
            "orchestrator": self.orchestrator,
        }

    def broadcast_status(self, frame: bytes | None = None) -> None:
        self._status_seq += 1
        status = {**self.status(), "seq": self._status_seq}
        for tab in self.tabs.values():
            tab.push_status(status, frame)

    def stats(self) -> dict[str, Any]:
        """For ``GET /api/stats``: counters a person or a test can check."""
        return {
            **self.status(),
            "tabs": len(self.tabs),
            "frames": {tab.tab_id: {"sent": tab.frames_sent, "skipped": tab.frames_skipped} for tab in self.tabs.values()},
            "dropped": dict(self.dropped),
            "history": self.history,
            "training": self.training,
        }


def teaching_figures(trial: TrialView) -> dict[str, Any]:
    """How the teaching of a trial goes: the page plots them per trial, the current one included."""
    return {
        "asked_steps": trial.asked_steps,
        "answered_steps": trial.answered_steps,
        "ask_rate": trial.asked_steps / trial.step if trial.step else 0.0,
        "timeouts": trial.timeouts,
        "teacher_seconds": round(trial.teacher_seconds, 2),
    }
