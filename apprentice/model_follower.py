"""The latest iteration of a model, followed once per process for every trial that plays it.

An actor that plays "the latest iteration" used to open its own VersionUpdate stream for each
trial, retrieve each new iteration on it and cancel it at the trial's end. Measured over 300
MountainCar trials with 3 publications each (``bench/model_follower_rss.py``), the components
process then grew ~80 KB a trial, linearly: native gRPC memory (tracemalloc and gc counts stay
flat), and only when iterations are retrieved on a stream that is later cancelled; one long-lived
stream that retrieves the same iterations stays flat. Sharing one follower per model is also
cheaper: one stream and one retrieval and deserialization per iteration, however many trials run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cogment.model_registry_v2 import ModelRegistry

from apprentice.cancellation import raise_if_cancelled
from apprentice.model import Model, ModelNotFound

log = logging.getLogger(__name__)

P = TypeVar("P")  # what trials act with, made from each iteration (e.g. a GreedyPolicy)

# A follower nobody used for this long stops (its stream closes); the next trial starts a new one.
DEFAULT_IDLE_SECONDS = 60.0


@dataclass(eq=False)
class FollowedModel(Generic[P]):
    """The latest iteration of ``model_id`` known so far, as ``current`` (swapped in place)."""

    model_id: str
    iteration: int
    current: P
    users: int = 0
    task: asyncio.Task | None = field(default=None, repr=False)  # follows the VersionUpdate stream
    idle_stop: asyncio.Task | None = field(default=None, repr=False)  # stops it once unused


class ModelFollowers(Generic[P]):
    """One ``FollowedModel`` per model id: started by the first trial, stopped when idle.

    ``async with followers.follow(model_id) as followed:`` then read ``followed.current`` at each
    step. ``prepare`` turns each retrieved iteration into what trials act with.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        model_class: type[Model],
        prepare: Callable[[Model], P],
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
    ) -> None:
        self.registry = registry
        self.model_class = model_class
        self.prepare = prepare
        self.idle_seconds = idle_seconds
        self._followed: dict[str, FollowedModel[P]] = {}
        self._starting = asyncio.Lock()  # two trials starting together share one follower

    def followed_models(self) -> list[str]:
        """The model ids followed right now (each has one open VersionUpdate stream)."""
        return list(self._followed)

    @contextlib.asynccontextmanager
    async def follow(self, model_id: str) -> AsyncIterator[FollowedModel[P]]:
        """The followed model while the block runs (ModelNotFound when it has no iteration yet)."""
        followed = await self._acquire(model_id)
        try:
            yield followed
        finally:
            followed.users -= 1
            if followed.users == 0 and self._followed.get(model_id) is followed:
                followed.idle_stop = asyncio.create_task(self._stop_when_idle(followed))

    async def close(self) -> None:
        """Stop every follower now (their streams close)."""
        for followed in list(self._followed.values()):
            if followed.idle_stop is not None:
                followed.idle_stop.cancel()
            await self._stop(followed)

    async def _acquire(self, model_id: str) -> FollowedModel[P]:
        async with self._starting:
            followed = self._followed.get(model_id)
            if followed is None:
                model = await self.model_class.retrieve_model(self.registry, model_id, -1)
                followed = FollowedModel(model_id, model.iteration, self.prepare(model))
                followed.task = asyncio.create_task(self._follow(followed))
                self._followed[model_id] = followed
            if followed.idle_stop is not None:
                followed.idle_stop.cancel()
                followed.idle_stop = None
            followed.users += 1
            return followed

    async def _follow(self, followed: FollowedModel[P]) -> None:
        """Swap in each newer iteration the registry announces, until cancelled or the stream ends."""
        model_id = followed.model_id
        try:
            async for info in self.registry.iteration_updates(model_id):
                if info.iteration <= followed.iteration:
                    continue
                try:
                    model = await self.model_class.retrieve_model(self.registry, model_id, info.iteration)
                except ModelNotFound:
                    continue  # a transient iteration already evicted: a newer one is announced
                followed.current, followed.iteration = self.prepare(model), model.iteration
            raise_if_cancelled()  # the SDK ends the stream quietly when the follower is stopped
            log.warning("The model registry closed the updates of model %r: the next trial follows it again", model_id)
        except Exception as error:  # noqa: BLE001 - the trials keep their policy; the next one retries
            log.warning("Stopped following model %r (%s): the next trial follows it again", model_id, error)
        finally:
            if self._followed.get(model_id) is followed:
                del self._followed[model_id]

    async def _stop_when_idle(self, followed: FollowedModel[P]) -> None:
        await asyncio.sleep(self.idle_seconds)
        await self._stop(followed)

    async def _stop(self, followed: FollowedModel[P]) -> None:
        if self._followed.get(followed.model_id) is followed:
            del self._followed[followed.model_id]
        if followed.task is not None:
            followed.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await followed.task
