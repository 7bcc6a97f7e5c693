"""What the services keep in memory for every stored trial and every archived model version.

Both stay listed for the life of the process, so their size is the slope of the services' memory
over a long run (``bench/soak.py``). Measured in process, in bytes that are exact whatever the
allocator reuses: Python objects with tracemalloc, native memory (protobuf messages) with glibc's
count of allocated bytes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cogment.api import common_pb2, datalog_pb2

from apprentice.services.datastore.storage import MemoryStorage
from apprentice.services.datastore.trials import TrialStore
from apprentice.services.model_registry.records import ModelRecord
from apprentice.services.model_registry.storage import VersionStore
from apprentice.services.model_registry.upload import NewVersion

COUNT = 2000


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def _malloc_in_use() -> Callable[[], int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        pytest.skip("needs glibc 2.33+ (mallinfo2) to count native memory")
    mallinfo2.restype = _MallInfo2
    return lambda: mallinfo2().uordblks


def bytes_per_item(add: Callable[[int], None]) -> float:
    """Memory kept per call of ``add(i)``: Python objects plus native allocations, per call.

    Two passes, because tracemalloc's own bookkeeping is allocated with malloc.
    """
    in_use = _malloc_in_use()
    for i in range(100):  # warm up: first-time allocations (caches, interned names) do not count
        add(-1 - i)
    gc.collect()
    before = in_use()
    for i in range(COUNT):
        add(i)
    gc.collect()
    native = in_use() - before
    tracemalloc.start()
    try:
        for i in range(COUNT, 2 * COUNT):
            add(i)
        gc.collect()
        python, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (native + python) / COUNT  # an upper bound: Python's large objects count twice


def soak_like_params() -> common_pb2.TrialParams:
    """As the MountainCar runs send them: two service actors with their config, a run id."""
    config = common_pb2.SerializedMessage(content=bytes(range(70)))
    actors = [
        common_pb2.ActorParams(
            name=name, actor_class=name, endpoint="grpc://127.0.0.1:9001", implementation=f"{name}_impl", config=config
        )
        for name in ("player", "teacher")
    ]
    return common_pb2.TrialParams(
        datalog=common_pb2.DatalogParams(endpoint="grpc://127.0.0.1:9000"),
        environment=common_pb2.EnvironmentParams(
            name="env", endpoint="grpc://127.0.0.1:9001", implementation="gym", config=common_pb2.SerializedMessage(content=b"MountainCar-v0")
        ),
        actors=actors,
        properties={"apprentice_run_id": "soak"},
    )


def test_a_stored_trial_costs_about_a_kilobyte():
    # Before: the parsed TrialParams of each trial stayed in memory, ~2.5 KB of native protobuf
    # memory for these params (3.4 KB a trial in all); now they are kept serialized.
    store = TrialStore(MemoryStorage())
    serialized = datalog_pb2.RunTrialDatalogInput(trial_params=soak_like_params()).SerializeToString()

    def add(i: int) -> None:
        # As the datalog stream hands them over: part of a request parsed by gRPC.
        request = datalog_pb2.RunTrialDatalogInput.FromString(serialized)
        store.create_or_update(str(uuid.uuid4()), "soak-user", request.trial_params)

    per_trial = bytes_per_item(add)
    print(f"per trial {per_trial:.0f} B")
    assert per_trial < 1600
    found = list(store.select([], {"apprentice_run_id": "soak"}, 0))
    assert len(found) == 2 * COUNT + 100
    assert found[0].info().params == soak_like_params()


def test_an_archived_version_costs_under_a_kilobyte_and_a_half(tmp_path: Path):
    # Before: ~1.8 KB a version (a Path per version, dict-based records, the user data copied twice).
    store = VersionStore.open(tmp_path)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(store.put_model(ModelRecord("model")))

        async def publish(i: int) -> None:
            user_data = {"loss": f"0.{i:016d}", "training_steps": "200", "hidden_sizes": "64,64", "samples": str(i)}
            upload = await store.begin_upload(NewVersion(model_id="model", archived=True, data_size=10, user_data=user_data))
            await upload.write(b"0123456789")
            await upload.finish()
            await store.commit(upload)

        per_version = bytes_per_item(lambda i: loop.run_until_complete(publish(i)))
        print(f"per version {per_version:.0f} B")
        assert per_version < 1400
        assert store.version("model", -1).record.user_data["samples"] == str(2 * COUNT - 1)
    finally:
        loop.close()
