"""Model registry (ModelRegistrySP) against the real SDK client, served by a real services process.

Protocol notes section 7 and conformance scenarios 22-24. The SDK calls go through
``cogment.Context.get_model_registry_v2``; what the SDK cannot express (malformed uploads, paging
handles, status codes) goes through a raw gRPC stub with the SDK's default 4 MiB receive limit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path

import cogment
import grpc
import psutil
import pytest
from cogment.api import common_pb2, model_registry_pb2_grpc
from cogment.api import model_registry_pb2 as pb
from conftest import ServicesProcess, start_services_process

from apprentice.services.common import server_options
from apprentice.services.model_registry import ModelRegistry
from apprentice.services.model_registry.data import rechunk

MiB = 1024 * 1024
SDK_MAX_MESSAGE = 4 * MiB


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def make_registry_context() -> cogment.Context:
    # Must be created inside the running loop; no Prometheus registry (several contexts per process).
    return cogment.Context(user_id="model-registry-tests", cog_settings=None, prometheus_registry=None)


async def sdk_registry(services: ServicesProcess):
    return await make_registry_context().get_model_registry_v2(cogment.Endpoint(services.endpoint))


@pytest.fixture
async def registry(services: ServicesProcess):
    return await sdk_registry(services)


@pytest.fixture
async def stub(services: ServicesProcess):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{services.port}")
    yield model_registry_pb2_grpc.ModelRegistrySPStub(channel)
    await channel.close()


def header(model_id: str, data_size: int, data_hash: str = "", archived: bool = False) -> pb.CreateVersionRequestChunk:
    info = pb.ModelVersionInfo(model_id=model_id, data_size=data_size, data_hash=data_hash, archived=archived)
    return pb.CreateVersionRequestChunk(header=pb.CreateVersionRequestChunk.Header(version_info=info))


def body(data: bytes) -> pb.CreateVersionRequestChunk:
    return pb.CreateVersionRequestChunk(body=pb.CreateVersionRequestChunk.Body(data_chunk=data))


async def expect_error(call, code: grpc.StatusCode, *words: str) -> str:
    """Await ``call``; it must fail with ``code`` and a message containing ``words``."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details()
    for word in words:
        assert word in details, details
    return details


async def read_data(stub, model_id: str, version_number: int) -> list[bytes]:
    request = pb.RetrieveVersionDataRequest(model_id=model_id, version_number=version_number)
    return [chunk.data_chunk async for chunk in stub.RetrieveVersionData(request)]


# Scenario 22: basics


async def test_publish_retrieve_and_unknowns(registry) -> None:
    infos = [await registry.publish_model("basics", f"weights {i}".encode(), {"step": str(i)}) for i in range(3)]

    assert [info.iteration for info in infos] == [1, 2, 3]
    assert infos[2].size == len(b"weights 2")
    assert infos[2].hash == sha256_b64(b"weights 2")
    assert infos[2].stored is False
    assert dict(infos[2].properties) == {"step": "2"}
    assert infos[2].timestamp > 0
    assert await registry.retrieve_model("basics") == b"weights 2"
    assert await registry.retrieve_model("basics", -1) == b"weights 2"
    assert await registry.retrieve_model("basics", 1) == b"weights 0"
    assert await registry.retrieve_model("basics", -3) == b"weights 0"
    assert await registry.retrieve_model("basics", 99) is None

    assert (await registry.get_iteration_info("basics", -1)).iteration == 3
    assert (await registry.get_iteration_info("basics", 2)).hash == sha256_b64(b"weights 1")
    assert await registry.get_iteration_info("basics", 99) is None
    assert await registry.get_iteration_info("basics", -4) is None
    assert await registry.get_iteration_info("basics", 0) is None

    with pytest.raises(cogment.CogmentError, match="Unknown model"):
        await registry.retrieve_model("no-such-model")
    with pytest.raises(cogment.CogmentError, match="Unknown model"):
        await registry.get_iteration_info("no-such-model", 1)
    assert await registry.get_model_info("no-such-model") is None
    with pytest.raises(cogment.CogmentError):
        await registry.list_iterations("no-such-model")

    await registry.update_model_info("basics", {"kind": "policy"})
    assert dict((await registry.get_model_info("basics")).properties) == {"kind": "policy"}
    stored = await registry.store_model("basics", b"kept")
    assert (stored.iteration, stored.stored) == (4, True)


async def test_list_iterations_and_models_page(registry, stub) -> None:
    for i in range(25):
        await registry.publish_model("paged", bytes([i]))
    iterations = await registry.list_iterations("paged")
    assert [info.iteration for info in iterations] == list(range(1, 26))
    assert iterations[24].hash == sha256_b64(bytes([24]))

    first = await stub.RetrieveVersionInfos(pb.RetrieveVersionInfosRequest(model_id="paged", versions_count=10))
    assert [info.version_number for info in first.version_infos] == list(range(1, 11))
    assert first.next_version_handle == "11"
    last = await stub.RetrieveVersionInfos(
        pb.RetrieveVersionInfosRequest(model_id="paged", versions_count=10, version_handle="21")
    )
    assert [info.version_number for info in last.version_infos] == list(range(21, 26))
    assert last.next_version_handle == "26"
    picked = await stub.RetrieveVersionInfos(pb.RetrieveVersionInfosRequest(model_id="paged", version_numbers=[-1, 3]))
    assert [info.version_number for info in picked.version_infos] == [25, 3]

    names = [f"model-{i:02d}" for i in range(12)]
    for name in reversed(names):
        await registry.publish_model(name, b"x")
    assert [model.name for model in await registry.list_models()] == [*names, "paged"]
    page = await stub.RetrieveModels(pb.RetrieveModelsRequest(models_count=5, model_handle="10"))
    assert [info.model_id for info in page.model_infos] == ["model-10", "model-11", "paged"]
    assert page.next_model_handle == "13"
    by_id = await stub.RetrieveModels(pb.RetrieveModelsRequest(model_ids=["paged", "model-03"]))
    assert [info.model_id for info in by_id.model_infos] == ["paged", "model-03"]


async def test_remove_model(registry, stub) -> None:
    await registry.store_model("doomed", b"archived")
    await registry.publish_model("doomed", b"transient")
    await registry.remove_model("doomed")

    assert await registry.get_model_info("doomed") is None
    with pytest.raises(cogment.CogmentError):
        await registry.retrieve_model("doomed")
    await expect_error(stub.DeleteModel(pb.DeleteModelRequest(model_id="doomed")), grpc.StatusCode.NOT_FOUND, "doomed")
    # A model created again under the same name starts afresh.
    assert (await registry.publish_model("doomed", b"new")).iteration == 1
    assert [info.iteration for info in await registry.list_iterations("doomed")] == [1]


async def test_concurrent_publishes_get_distinct_numbers(registry) -> None:
    await registry.publish_model("busy", b"first")
    infos = await asyncio.gather(*(registry.publish_model("busy", bytes([i]) * 1000) for i in range(20)))
    assert sorted(info.iteration for info in infos) == list(range(2, 22))
    for info in infos:
        data = await registry.retrieve_model("busy", info.iteration)
        assert (len(data), sha256_b64(data)) == (1000, info.hash)


# Scenario 23: large versions


@pytest.mark.parametrize("archived", [True, False], ids=["archived", "transient"])
async def test_large_version_round_trips(registry, stub, archived: bool) -> None:
    data = os.urandom(50 * 1000 * 1000)
    send = registry.store_model if archived else registry.publish_model
    await send("large", b"small first version")

    info = await send("large", data)

    assert (info.iteration, info.size, info.hash, info.stored) == (2, len(data), sha256_b64(data), archived)
    assert await registry.retrieve_model("large", -1) == data
    assert (await registry.get_iteration_info("large", -1)).hash == sha256_b64(data)
    chunks = await read_data(stub, "large", 2)
    assert all(0 < len(chunk) <= 2 * MiB for chunk in chunks)
    assert sum(len(chunk) for chunk in chunks) == len(data)


async def test_empty_version_is_one_empty_chunk(stub, registry) -> None:
    await registry.update_model_info("empty", {})
    reply = await stub.CreateVersion(iter([header("empty", 0)]))
    assert (reply.version_info.version_number, reply.version_info.data_hash) == (1, sha256_b64(b""))
    assert await read_data(stub, "empty", -1) == [b""]


# Scenario 24: tracking the latest version


async def test_track_latest_model(registry) -> None:
    await registry.publish_model("tracked", b"version one")
    latest = await registry.track_latest_model("tracked")

    model, info = await asyncio.wait_for(latest.get(), 10)
    assert (model, info.iteration) == (b"version one", 1)

    await registry.publish_model("tracked", b"version two")
    await asyncio.wait_for(latest.wait_for_newer(1), 10)
    model, info = await latest.get()
    assert (model, info.iteration) == (b"version two", 2)

    # Stop the SDK's background tracking task before the loop ends.
    import cogment.model_registry_v2 as sdk_registry_module

    sdk_registry_module._tracked_models.pop("tracked").terminate()


async def test_version_update_stream(registry, stub, services: ServicesProcess) -> None:
    await expect_error(
        stub.VersionUpdate(pb.VersionUpdateRequest(model_id="nobody")).read(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "nobody",
    )
    await registry.update_model_info("watched", {})
    updates = registry.iteration_updates("watched")
    first = asyncio.ensure_future(anext(updates))
    await asyncio.sleep(0.2)  # the scenario: time passes and nothing may arrive, as there is no version yet
    assert not first.done(), "no version yet: nothing to send"
    await registry.publish_model("watched", b"1")
    assert (await asyncio.wait_for(first, 5)).iteration == 1
    await registry.publish_model("watched", b"2")
    assert (await asyncio.wait_for(anext(updates), 5)).iteration == 2
    await updates.aclose()

    # A new watcher first gets the current latest version.
    call = stub.VersionUpdate(pb.VersionUpdateRequest(model_id="watched"))
    assert (await asyncio.wait_for(call.read(), 5)).version_info.version_number == 2

    # Waiting costs no CPU (no polling), and cancelled watchers are released.
    process = psutil.Process(services.process.pid)
    watchers = [stub.VersionUpdate(pb.VersionUpdateRequest(model_id="watched")) for _ in range(20)]
    for watcher in watchers:
        await asyncio.wait_for(watcher.read(), 5)
    before = process.cpu_times()
    await asyncio.sleep(1.0)  # the scenario: a second of waiting, whose CPU cost is measured
    after = process.cpu_times()
    assert (after.user + after.system) - (before.user + before.system) < 0.2
    for watcher in watchers:
        watcher.cancel()

    # Deleting the model ends the stream with an error.
    await registry.remove_model("watched")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# Persistence and the cache of transient versions


async def test_archived_versions_survive_a_restart(tmp_path: Path, services: ServicesProcess) -> None:
    registry = await sdk_registry(services)
    await registry.store_model("durable", b"archived one", {"step": "1"})
    await registry.store_model("durable", b"archived two")
    await registry.publish_model("durable", b"transient three")
    await registry.update_model_info("durable", {"owner": "tests"})
    await registry.publish_model("fleeting", b"transient only")
    assert services.stop() == 0

    # Leftovers of a crash in the middle of writes must not show up as versions.
    models_dir = services.data_dir / "models"
    (models_dir / ".incoming" / "dead.part").write_bytes(b"partial upload")
    (models_dir / "durable" / "v000009.data").write_bytes(b"data without metadata")
    (models_dir / "durable" / ".v000009.json.0123.tmp").write_bytes(b"{half")
    (models_dir / ".trash-0123").mkdir()

    restarted = start_services_process(services.data_dir, tmp_path / "restarted.log")
    try:
        registry = await sdk_registry(restarted)
        assert dict((await registry.get_model_info("durable")).properties) == {"owner": "tests"}
        assert await registry.retrieve_model("durable", 1) == b"archived one"
        assert dict((await registry.get_iteration_info("durable", 1)).properties) == {"step": "1"}
        assert await registry.retrieve_model("durable") == b"archived two"
        assert await registry.retrieve_model("durable", 3) is None
        assert [info.iteration for info in await registry.list_iterations("durable")] == [1, 2]
        assert await registry.list_iterations("fleeting") == []
        assert await registry.retrieve_model("fleeting") is None
        assert (await registry.publish_model("durable", b"after restart")).iteration == 3
        assert sorted(path.name for path in models_dir.iterdir()) == [".incoming", "durable", "fleeting"]
        assert list((models_dir / ".incoming").iterdir()) == []
        assert sorted(path.name for path in (models_dir / "durable").iterdir()) == [
            "model.json", "v000001.data", "v000001.json", "v000002.data", "v000002.json",
        ]
    finally:
        assert restarted.stop() == 0


async def test_transient_versions_are_evicted_least_recently_used_first(registry) -> None:
    # The default cache keeps 100 transient versions over all models; archived ones are not counted.
    await registry.store_model("evicted", b"archived")
    for i in range(2, 62):
        await registry.publish_model("evicted", f"v{i}".encode())
    for i in range(1, 41):
        await registry.publish_model("neighbour", f"n{i}".encode())
    # 100 transient versions now: evicted 2..61 and neighbour 1..40, none dropped yet.
    assert await registry.retrieve_model("evicted", 2) == b"v2"  # now the most recently used
    for i in range(41, 46):
        await registry.publish_model("neighbour", f"n{i}".encode())

    assert await registry.retrieve_model("evicted", 1) == b"archived"
    assert await registry.retrieve_model("evicted", 2) == b"v2"
    for gone in range(3, 8):
        assert await registry.retrieve_model("evicted", gone) is None
        assert await registry.get_iteration_info("evicted", gone) is None
    assert await registry.retrieve_model("evicted", 8) == b"v8"
    assert [info.iteration for info in await registry.list_iterations("evicted")] == [1, 2, *range(8, 62)]
    assert len(await registry.list_iterations("neighbour")) == 45
    assert (await registry.publish_model("evicted", b"next")).iteration == 62


# Malformed requests (raw gRPC)


async def test_bad_requests_get_clear_errors(stub, registry, services: ServicesProcess) -> None:
    await registry.update_model_info("strict", {})
    data = b"0123456789" * 100

    await expect_error(stub.CreateVersion(iter([])), grpc.StatusCode.INVALID_ARGUMENT, "header")
    await expect_error(stub.CreateVersion(iter([body(data)])), grpc.StatusCode.INVALID_ARGUMENT, "header")
    await expect_error(
        stub.CreateVersion(iter([header("strict", len(data)), header("strict", len(data))])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "body",
    )
    await expect_error(
        stub.CreateVersion(iter([header("strict", len(data) + 1), body(data)])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_size",
        str(len(data) + 1),
    )
    await expect_error(
        stub.CreateVersion(iter([header("strict", len(data) - 1, archived=True), body(data)])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_size",
    )
    await expect_error(
        stub.CreateVersion(iter([header("strict", len(data), data_hash=sha256_b64(b"other")), body(data)])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_hash",
        sha256_b64(data),
    )
    await expect_error(
        stub.CreateVersion(iter([header("ghost", len(data)), body(data)])), grpc.StatusCode.NOT_FOUND, "ghost"
    )
    # Rejected uploads use no version number and leave no file behind.
    good = await stub.CreateVersion(iter([header("strict", len(data), sha256_b64(data), archived=True), body(data)]))
    assert good.version_info.version_number == 1
    assert list((services.data_dir / "models" / ".incoming").iterdir()) == []

    await expect_error(read_data(stub, "ghost", -1), grpc.StatusCode.NOT_FOUND, "ghost")
    await expect_error(read_data(stub, "strict", 7), grpc.StatusCode.NOT_FOUND, "latest version is 1")
    await expect_error(read_data(stub, "strict", 0), grpc.StatusCode.NOT_FOUND, "start at 1")
    await expect_error(
        stub.RetrieveVersionInfos(pb.RetrieveVersionInfosRequest(model_id="strict", version_numbers=[1, 5])),
        grpc.StatusCode.NOT_FOUND,
        "5",
    )
    await expect_error(
        stub.RetrieveVersionInfos(pb.RetrieveVersionInfosRequest(model_id="ghost")), grpc.StatusCode.NOT_FOUND
    )
    await expect_error(
        stub.RetrieveVersionInfos(pb.RetrieveVersionInfosRequest(model_id="strict", version_handle="page2")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "version_handle",
    )
    await expect_error(
        stub.RetrieveModels(pb.RetrieveModelsRequest(model_ids=["strict", "ghost"])), grpc.StatusCode.NOT_FOUND, "ghost"
    )
    await expect_error(
        stub.CreateOrUpdateModel(pb.CreateOrUpdateModelRequest(model_info=pb.ModelInfo(model_id=""))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model_id",
    )

    versions = await stub.Version(common_pb2.VersionRequest())
    assert len(versions.versions) > 0
    status = await stub.Status(common_pb2.StatusRequest(names=["*"]))
    assert status.statuses["overall_load"] == "0"


# In-process: the memory-only registry, its settings, and close()


@pytest.fixture
async def small_registry():
    """A memory-only registry keeping 3 transient versions and sending 1000-byte chunks."""
    registry = ModelRegistry.create(None, cache_max_versions=3, chunk_size=1000)
    server = grpc.aio.server(options=list(server_options()))
    registry.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield registry, model_registry_pb2_grpc.ModelRegistrySPStub(channel)
    finally:
        await channel.close()
        await registry.close()
        await server.stop(None)


async def test_memory_only_registry_with_small_cache(small_registry) -> None:
    _, stub = small_registry
    await stub.CreateOrUpdateModel(pb.CreateOrUpdateModelRequest(model_info=pb.ModelInfo(model_id="m")))
    for number, archived in enumerate([True, False, False, False, False], start=1):
        data = bytes([number]) * 2500
        await stub.CreateVersion(iter([header("m", len(data), archived=archived), body(data[:7]), body(data[7:])]))

    listed = await stub.RetrieveVersionInfos(pb.RetrieveVersionInfosRequest(model_id="m"))
    assert [info.version_number for info in listed.version_infos] == [1, 3, 4, 5]
    assert [len(chunk) for chunk in await read_data(stub, "m", 1)] == [1000, 1000, 500]
    assert b"".join(await read_data(stub, "m", -1)) == bytes([5]) * 2500
    await expect_error(read_data(stub, "m", 2), grpc.StatusCode.NOT_FOUND, "no longer available", "store_model")


async def test_close_ends_version_update_streams(small_registry) -> None:
    registry, stub = small_registry
    await stub.CreateOrUpdateModel(pb.CreateOrUpdateModelRequest(model_info=pb.ModelInfo(model_id="m")))
    await stub.CreateVersion(iter([header("m", 1), body(b"1")]))
    call = stub.VersionUpdate(pb.VersionUpdateRequest(model_id="m"))
    # The stream is open and waiting once it has sent the current version.
    assert (await asyncio.wait_for(call.read(), 5)).version_info.version_number == 1
    await registry.close()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rechunk_cuts_and_glues() -> None:
    segments = [b"a" * 5, b"b" * 3, b"c" * 12, b"", b"d" * 4, b"e" * 4]
    pieces = list(rechunk(segments, 4))
    assert b"".join(pieces) == b"".join(segments)
    assert [len(piece) for piece in pieces] == [4] * 7
    exact = b"x" * 4
    assert next(rechunk([exact], 4)) is exact
    assert list(rechunk([], 4)) == []
