"""Follows the run's model in the model registry, so that the page shows how training goes.

Every iteration the run publishes carries its training figures in its user data (``loss``,
``training_steps``, ``samples``; see ``apprentice.model``), those the run evaluated carry the
agent's success alone (``eval_success_rate``: the page plots the latest per trial), and the run's
last iteration carries
``run_finished``, the evaluation of the agent alone and the run's totals (``trials``,
``demonstrations``). Reading them from the registry, like any Cogment client, keeps the page
independent of where the run happens.

The model exists only once the run has published it, and the registry may restart: the follower
waits and retries.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

import cogment

from apprentice.cancellation import raise_if_cancelled
from apprentice.model import RUN_FINISHED
from web.hub import Hub

log = logging.getLogger(__name__)

RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
MAX_TREND_POINTS = 200  # iterations drawn in the loss trend


@dataclass(frozen=True)
class IterationFigures:
    iteration: int
    training_steps: int | None
    loss: float | None
    samples: int | None
    eval_success_rate: float | None
    trials: int | None
    demonstrations: int | None
    run_finished: bool

    @classmethod
    def from_user_data(cls, iteration: int, user_data: Any) -> IterationFigures:
        """The figures of one iteration; a missing or unreadable figure is None, never an error."""
        return cls(
            iteration=iteration,
            training_steps=_number(user_data, "training_steps", int),
            loss=_number(user_data, "loss", float),
            samples=_number(user_data, "samples", int),
            eval_success_rate=_number(user_data, "eval_success_rate", float),
            trials=_number(user_data, "trials", int),
            demonstrations=_number(user_data, "demonstrations", int),
            run_finished=user_data.get(RUN_FINISHED) == "true",
        )


def _number(user_data: Any, key: str, kind: type) -> Any:
    try:
        value = float(user_data[key])
    except (KeyError, ValueError, TypeError):
        return None
    return kind(value) if math.isfinite(value) else None


def training_view(iterations: list[IterationFigures]) -> dict[str, Any]:
    """What the page shows: the latest iteration, the loss trend, the latest evaluation, and the run's end when it came."""
    latest = iterations[-1]
    finished = latest.run_finished
    with_loss = [figures for figures in iterations if figures.loss is not None][-MAX_TREND_POINTS:]
    evaluated = [figures for figures in iterations if figures.eval_success_rate is not None]
    return {
        "iteration": latest.iteration,
        "training_steps": latest.training_steps,
        "samples": latest.samples,
        "loss": with_loss[-1].loss if with_loss else None,
        "loss_trend": [[figures.iteration, round(figures.loss, 5)] for figures in with_loss],
        "latest_evaluation": (
            {"iteration": evaluated[-1].iteration, "success_rate": evaluated[-1].eval_success_rate} if evaluated else None
        ),
        "run_finished": finished,
        "eval_success_rate": latest.eval_success_rate if finished else None,
        "trials": latest.trials if finished else None,
        "demonstrations": latest.demonstrations if finished else None,
    }


class TrainingFollower:
    def __init__(self, context: cogment.Context, model_registry_endpoint: str, model_id: str, hub: Hub) -> None:
        self.context = context
        self.endpoint = cogment.Endpoint(model_registry_endpoint)
        self.model_id = model_id
        self.hub = hub

    async def run(self) -> None:
        """Follow until cancelled."""
        failures = 0
        while True:
            try:
                registry = await self.context.get_model_registry_v2(self.endpoint)
                # VersionUpdate refuses a model that does not exist yet: wait for the run's first publication.
                while await registry.get_model_info(self.model_id) is None:
                    await asyncio.sleep(RETRY_SECONDS[0])
                failures = 0
                # The stream may skip iterations published in a burst: each update re-reads the list.
                async for _latest in registry.iteration_updates(self.model_id):
                    infos = await registry.list_iterations(self.model_id)
                    iterations = [IterationFigures.from_user_data(info.iteration, info.properties) for info in infos]
                    if iterations:
                        self.hub.set_training(training_view(sorted(iterations, key=lambda figures: figures.iteration)))
                raise_if_cancelled()  # the SDK ends the stream quietly when this task is cancelled
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure of the link: retry
                log.debug("Model registry at %s: %s", self.endpoint.url, error)
            await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
            failures += 1
