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


def bytes_per_item(add: Callable[[int], None], count: int, native: bool = True) -> float:
    """Memory kept per call of ``add(i)``: Python objects, plus native allocations if ``native``.

    Two passes, because tracemalloc's own bookkeeping is allocated with malloc.
    """
    in_use = _malloc_in_use() if native else (lambda: 0)
    for i in range(100):  # warm up: first-time allocations (caches, interned names) do not count
        add(-1 - i)
    gc.collect()
    before = in_use()
    for i in range(count if native else 0):
        add(i)
    gc.collect()
    native_bytes = in_use() - before
    tracemalloc.start()
    try:
        for i in range(count, 2 * count):
            add(i)
        gc.collect()
        python_bytes, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (native_bytes + python_bytes) / count  # an upper bound: Python's large objects count twice


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


def test_a_stored_trial_costs_under_1600_bytes():
    # Before: the parsed TrialParams of each trial stayed in memory, ~2.5 KB of native protobuf
    # memory for these params (3.6 KB a trial in all, 1.2 KB now); they are kept serialized.
    store = TrialStore(MemoryStorage())
    serialized = datalog_pb2.RunTrialDatalogInput(trial_params=soak_like_params()).SerializeToString()

    def add(i: int) -> None:
        # As the datalog stream hands them over: part of a request parsed by gRPC.
        request = datalog_pb2.RunTrialDatalogInput.FromString(serialized)
        store.create_or_update(str(uuid.uuid4()), "soak-user", request.trial_params)

    per_trial = bytes_per_item(add, 2000)
    assert per_trial < 1600
    found = list(store.select([], {"apprentice_run_id": "soak"}, 0))
    assert len(found) == 2 * 2000 + 100
    assert found[0].info().params == soak_like_params()


def test_an_archived_version_costs_under_1100_bytes(tmp_path: Path):
    # Before: 1.3 KB of Python objects a version (a Path each, records with a __dict__), 0.9 KB now; the
    # registry keeps no native memory per version. Archived on disk as in a run (a few seconds).
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

        per_version = bytes_per_item(lambda i: loop.run_until_complete(publish(i)), 300, native=False)
        assert per_version < 1100
        assert store.version("model", -1).record.user_data["samples"] == "599"
    finally:
        loop.close()
