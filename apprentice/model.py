"""Models in the Cogment model registry: what every trainable policy has in common.

A model is published as a new *iteration* of its ``model_id``: transient (``publish``, kept in the
registry's memory, enough for actors to pick up the latest policy) or archived (``store``, kept on
disk, what ``resume`` starts from). ``retrieve_model(..., iteration=-1)`` gets the latest one.

An iteration's user data is the model's rebuild information plus the training metrics it was
published with (e.g. ``loss``, ``training_steps``): whoever follows the model in the registry, like
the teacher's web page, sees how training goes without another channel. The last iteration of a
run carries ``RUN_FINISHED`` and its evaluation.
"""

from __future__ import annotations

import abc
from typing import TypeVar

from cogment.model_registry_v2 import ModelRegistry

ModelType = TypeVar("ModelType", bound="Model")

RUN_FINISHED = "run_finished"  # iteration user data key: the run ended with this iteration


class ModelNotFound(LookupError):
    """The registry has no such model or iteration."""


class Model(abc.ABC):
    def __init__(self, model_id: str, iteration: int = 0) -> None:
        self.model_id = model_id
        self.iteration = iteration

    @abc.abstractmethod
    def get_model_user_data(self) -> dict[str, str]:
        """What it takes to rebuild the model besides its weights (sizes, spaces...), as strings."""

    @classmethod
    @abc.abstractmethod
    def serialize_model(cls, model: ModelType) -> bytes:
        """The model as bytes for the registry."""

    @classmethod
    @abc.abstractmethod
    def deserialize_model(cls: type[ModelType], serialized_model: bytes) -> ModelType:
        """The inverse of ``serialize_model``; must not execute code from the bytes."""

    async def publish(self, registry: ModelRegistry, **metrics: float | str) -> int:
        """A transient iteration (memory only); returns its number, also set on ``self.iteration``."""
        return await self._send(registry, archived=False, metrics=metrics)

    async def store(self, registry: ModelRegistry, **metrics: float | str) -> int:
        """An archived iteration (kept on disk); returns its number, also set on ``self.iteration``."""
        return await self._send(registry, archived=True, metrics=metrics)

    async def _send(self, registry: ModelRegistry, archived: bool, metrics: dict[str, float | str]) -> int:
        send = registry.store_model if archived else registry.publish_model
        user_data = {**self.get_model_user_data(), **{key: str(value) for key, value in metrics.items()}}
        info = await send(self.model_id, self.serialize_model(self), user_data)
        self.iteration = info.iteration
        return info.iteration

    @classmethod
    async def retrieve_model(
        cls: type[ModelType], registry: ModelRegistry, model_id: str, iteration: int = -1
    ) -> ModelType:
        """Iteration ``iteration`` of ``model_id`` (-1: the latest)."""
        info = await registry.get_iteration_info(model_id, iteration)
        data = await registry.retrieve_model(model_id, info.iteration) if info is not None else None
        if data is None:
            raise ModelNotFound(f"model {model_id!r} has no iteration {iteration} in the model registry")
        model = cls.deserialize_model(data)
        model.model_id = model_id
        model.iteration = info.iteration
        return model
