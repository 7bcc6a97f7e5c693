"""One follower per model for all the trials that play it: shared, up to date, stopped when idle.

Against the real services process and the cogment SDK's model registry client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import cogment
import pytest
from cogment.errors import CogmentError

from actors.simple_bc import SimpleBCModel
from apprentice import cog_settings
from apprentice.ensemble import EnsemblePolicy
from apprentice.model_follower import ModelFollowers
from apprentice.spaces import environment_specs

pytestmark = pytest.mark.timeout(60)

SPECS = environment_specs("MountainCar-v0")


@pytest.fixture
async def registry(services):
    context = cogment.Context(user_id="test", cog_settings=cog_settings, prometheus_registry=None)
    return await context.get_model_registry_v2(cogment.Endpoint(services.endpoint))


@pytest.fixture
async def followers(registry) -> AsyncIterator[ModelFollowers[EnsemblePolicy]]:
    followers = ModelFollowers(registry, SimpleBCModel, SimpleBCModel.policy, idle_seconds=0.5)
    try:
        yield followers
    finally:
        await followers.close()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.02)


async def test_the_trials_of_a_model_share_one_follower_that_swaps_in_new_iterations(registry, followers):
    model = SimpleBCModel("shared", SPECS, [8])
    await model.store(registry)
    async with followers.follow("shared") as first, followers.follow("shared") as second:
        assert first is second and followers.followed_models() == ["shared"]
        assert first.current.iteration == 1
        await model.publish(registry)  # transient iterations are followed too
        await until(lambda: first.current.iteration == 2)
        assert first.iteration == 2


async def test_a_trial_end_leaves_no_stream_once_the_follower_is_idle(registry, followers):
    await SimpleBCModel("idle", SPECS, [8]).store(registry)
    async with followers.follow("idle") as followed:
        pass
    assert followers.followed_models() == ["idle"], "kept for the next trial for a while"
    async with followers.follow("idle") as again:
        assert again is followed, "the next trial reuses it"
    await until(lambda: followers.followed_models() == [])
    assert followed.task is not None and followed.task.done(), "its VersionUpdate stream is closed"
    left = [task for task in asyncio.all_tasks() if task.get_coro().__qualname__.startswith("ModelFollowers.")]
    assert left == [], "no follow or idle-stop task is left"


async def test_a_deleted_model_stops_its_follower_and_the_next_trial_follows_it_anew(registry, followers):
    await SimpleBCModel("deleted", SPECS, [8]).store(registry)
    async with followers.follow("deleted") as followed:
        await registry.remove_model("deleted")
        await until(lambda: followed.task.done())
        assert followers.followed_models() == []
        assert followed.current.iteration == 1, "the running trial keeps its policy"
    with pytest.raises(CogmentError, match="Unknown model"):  # as Model.retrieve_model says it
        async with followers.follow("deleted"):
            pass
    await SimpleBCModel("deleted", SPECS, [8]).store(registry)
    async with followers.follow("deleted") as anew:
        assert anew is not followed and anew.current.iteration == 1
