"""When the learner asks for help: its uncertainty against a threshold (robot-gated teaching).

A teacher who must watch every step tires; an expert who labels every step costs labels. A learner
that knows where it is unsure (``apprentice.ensemble``: its members disagree) can ask only there, as
ThriftyDAgger does: it asks when its uncertainty is above the (1 - alpha) quantile of the
uncertainties of its recent steps, so that it asks for about a share alpha of the steps, the help
the teacher is willing to give (``run.help.budget``). A fixed threshold (``run.help.threshold``)
asks wherever the uncertainty exceeds it instead.

The player decides, for each copy at each step, and says so in its action
(``PlayerAction.ask_for_help`` and ``uncertainty``); the override rule (``apprentice.teaching``)
reads it there to decide what the label of the step is.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from apprentice.protos import data_pb2

DEFAULT_WINDOW = 1000  # recent steps whose uncertainties set the threshold
UNCERTAINTY_QUANTILES = (0.5, 0.9, 0.99)  # logged per trial and per round


class HelpMode(enum.StrEnum):
    OFF = "off"  # never asks (the teacher decides alone when to step in)
    ASK = "ask"  # asks when unsure


@dataclass(frozen=True)
class HelpSettings:
    """``run.help``: whether and when the learner asks for help."""

    mode: HelpMode = HelpMode.OFF
    budget: float = 0.1  # alpha: the share of steps to ask for
    threshold: float | None = None  # a fixed threshold instead of the budget's quantile
    window: int = DEFAULT_WINDOW

    @classmethod
    def from_config(cls, help_cfg, ensemble_size: int) -> HelpSettings:
        """The ``run.help`` section, checked: a ValueError names the setting and its fix."""
        if help_cfg is None:
            return cls()
        mode = help_cfg.get("mode", HelpMode.OFF.value)
        if mode not in tuple(HelpMode):
            raise ValueError(f"run.help.mode={mode!r}: use off (the teacher decides alone) or ask (the learner asks when unsure)")
        budget = help_cfg.get("budget", cls.budget)
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0.0 < budget < 1.0:
            raise ValueError(f"run.help.budget={budget!r}: it is the share of steps the learner may ask for, in (0, 1), e.g. run.help.budget=0.1")
        threshold = help_cfg.get("threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0):
            raise ValueError(f"run.help.threshold={threshold!r}: give a number >= 0 (an uncertainty), or null to use run.help.budget")
        window = help_cfg.get("window", DEFAULT_WINDOW)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"run.help.window={window!r}: give the number of recent steps the threshold is computed from, e.g. {DEFAULT_WINDOW}")
        settings = cls(HelpMode(mode), float(budget), None if threshold is None else float(threshold), window)
        if settings.mode is HelpMode.ASK and ensemble_size < 2:
            raise ValueError(
                f"run.help.mode=ask with run.ensemble_size={ensemble_size}: the learner measures its uncertainty as the "
                "disagreement of an ensemble, so it needs at least 2 networks, e.g. run.ensemble_size=5"
            )
        return settings

    def message(self) -> data_pb2.HelpSettings:
        message = data_pb2.HelpSettings(mode=self.mode.value, budget=self.budget, window=self.window)
        if self.threshold is not None:
            message.threshold = self.threshold
        return message

    @classmethod
    def from_message(cls, message: data_pb2.HelpSettings) -> HelpSettings:
        if not message.mode:
            return cls()
        threshold = message.threshold if message.HasField("threshold") else None
        return cls(HelpMode(message.mode), message.budget, threshold, message.window or DEFAULT_WINDOW)


class HelpGate:
    """Decides, for a batch of uncertainties (one per copy), where the learner asks.

    With a budget, the threshold is the (1 - budget) quantile of the uncertainties of the last
    ``window`` steps before these: on a stationary stream it asks for about a share ``budget`` of
    the steps. The learner's stream is not stationary, though: as it drives into states it has
    never seen its uncertainty keeps rising, every new step is above the quantile of the old ones,
    and the quantile alone would ask at every step of such a stretch. So the budget is also a cap:
    of the last ``window`` steps, it asks for at most ``budget`` of them (plus one), the most
    uncertain first. Before it has seen any step it asks (it knows nothing of what is usual).
    A fixed threshold asks wherever the uncertainty is above it, without a cap.
    """

    def __init__(self, settings: HelpSettings) -> None:
        if settings.mode is not HelpMode.ASK:
            raise ValueError(f"a help gate asks; run.help.mode is {settings.mode.value}")
        self.settings = settings
        # The last `window` uncertainties twice: in arrival order (to drop the oldest) and sorted (for
        # the quantile). A quantile over the window at every step would sort it every step (~50 µs);
        # keeping it sorted costs a bisection and a short memmove per step.
        self._arrivals: deque[float] = deque()
        self._sorted: list[float] = []
        self._asked: deque[bool] = deque()  # whether it asked, for the same steps
        self._asked_count = 0

    def threshold(self) -> float:
        """The uncertainty above which it asks now (numpy's default, linearly interpolated quantile)."""
        if self.settings.threshold is not None:
            return self.settings.threshold
        if not self._sorted:
            return -math.inf
        position = (1.0 - self.settings.budget) * (len(self._sorted) - 1)
        below = math.floor(position)
        above = min(below + 1, len(self._sorted) - 1)
        return self._sorted[below] + (position - below) * (self._sorted[above] - self._sorted[below])

    def ask(self, uncertainties: np.ndarray) -> np.ndarray:
        """(N,) bool: where to ask; these uncertainties then join the recent ones."""
        uncertainties = np.asarray(uncertainties, dtype=np.float32).reshape(-1)
        asks = uncertainties > self.threshold()
        if self.settings.threshold is None:
            seen = min(len(self._arrivals) + len(uncertainties), self.settings.window)
            allowed = max(0, math.floor(self.settings.budget * seen) + 1 - self._asked_count)
            if np.count_nonzero(asks) > allowed:  # over the cap: only the most uncertain
                keep = np.argsort(-np.where(asks, uncertainties, -np.inf), kind="stable")[:allowed]
                asks = np.zeros_like(asks)
                asks[keep] = True
        for value, asked in zip(uncertainties.tolist(), asks.tolist()):
            self._arrivals.append(value)
            bisect.insort(self._sorted, value)
            self._asked.append(asked)
            self._asked_count += asked
            if len(self._arrivals) > self.settings.window:
                del self._sorted[bisect.bisect_left(self._sorted, self._arrivals.popleft())]
                self._asked_count -= self._asked.popleft()
        return asks


def gate_for(config: data_pb2.ActorConfig) -> HelpGate | None:
    """The help gate of a player whose trial config asks for one (``ActorConfig.help``), else None."""
    settings = HelpSettings.from_message(config.help)
    return HelpGate(settings) if settings.mode is HelpMode.ASK else None


def add_help_request(action: data_pb2.PlayerAction, gate: HelpGate | None, uncertainty: np.ndarray) -> None:
    """Write where the player asks, and its uncertainty, into its action (nothing without a gate)."""
    if gate is None:
        return
    action.ask_for_help.extend(gate.ask(uncertainty).tolist())
    action.uncertainty.extend(np.asarray(uncertainty, dtype=np.float32).tolist())


def uncertainty_quantiles(uncertainties: np.ndarray) -> dict[str, float]:
    """``uncertainty_q50``, ``_q90``, ``_q99`` of a trial's or a round's steps (nothing without steps)."""
    if not len(uncertainties):
        return {}
    return {f"uncertainty_q{round(quantile * 100)}": float(np.quantile(uncertainties, quantile)) for quantile in UNCERTAINTY_QUANTILES}
