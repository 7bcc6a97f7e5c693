"""Small pieces shared by every service: Version/Status answers and metadata reading."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from cogment.api import common_pb2

SERVICE_NAME = "apprentice"
SERVICE_VERSION = "0.1.0"

# Every message of the Cogment API must stay below the 4 MiB default receive limit of the SDK;
# our own servers accept a little more so that an oversized message gets a clear error from the
# service instead of a transport failure.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Paging handles (RetrieveTrials, RetrieveModels, RetrieveVersionInfos) are decimal counters that
# this service wrote; 18 digits fit an int64 and are far more than any store holds.
MAX_HANDLE_DIGITS = 18


class InvalidPagingHandle(ValueError):
    """A paging handle this service did not write; the message says what to send instead."""


def parse_paging_handle(handle: str, field: str) -> int:
    """The number in a paging handle; empty means "from the start".

    Checked before ``int()``: Python refuses to convert strings over 4,300 digits, and accepts
    digits that are not ASCII (``"²"`` passes ``isdigit`` but not ``int``).
    """
    if not handle:
        return 0
    if not (len(handle) <= MAX_HANDLE_DIGITS and handle.isascii() and handle.isdigit()):
        shown = handle if len(handle) <= 40 else f"{handle[:20]}... ({len(handle)} characters)"
        raise InvalidPagingHandle(
            f"Invalid {field} {shown!r}: it must be at most {MAX_HANDLE_DIGITS} decimal digits; leave it empty "
            f"for the first page, then pass the next_{field} of the previous reply"
        )
    return int(handle)


def version_info() -> common_pb2.VersionInfo:
    """What the official services report: a list of (name, version) pairs."""
    return common_pb2.VersionInfo(
        versions=[
            common_pb2.VersionInfo.Version(name=SERVICE_NAME, version=SERVICE_VERSION),
            common_pb2.VersionInfo.Version(name="grpc", version=grpc.__version__),
        ]
    )


def status_reply(request: common_pb2.StatusRequest, statuses: Mapping[str, str] | None = None) -> common_pb2.StatusReply:
    """Answer a Status request the way the official services do.

    ``"*"`` asks for every known status; unknown names are left out. ``overall_load`` is always known.
    """
    known = {"overall_load": "0", **(statuses or {})}
    reply = common_pb2.StatusReply()
    for name in request.names:
        if name == "*":
            reply.statuses.update(known)
            break
        if name in known:
            reply.statuses[name] = known[name]
    return reply


def metadata_values(context: grpc.aio.ServicerContext, key: str) -> list[str]:
    """All values of a (possibly repeated) metadata key, in order.

    The SDK controller sends one ``trial-id`` entry per trial, so metadata must not be read as a dict.
    """
    return [value for name, value in (context.invocation_metadata() or ()) if name == key]


def single_metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    values = metadata_values(context, key)
    return values[-1] if values else None


def server_options() -> Iterable[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # gRPC lets two servers share a port by default; a second Apprentice on the same port
        # would then silently get half of the calls. Refuse it instead.
        ("grpc.so_reuseport", 0),
    ]
