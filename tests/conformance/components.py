"""A process serving scripted SDK components for the conformance tests.

    python -m conformance.components --port PORT --events FILE [--serve env,actors,datalog]

(with ``tests/`` on ``PYTHONPATH``). It registers, through the unmodified Cogment SDK, the scripted
environment (impls ``alt`` and ``scripted``), the scripted actor (impls ``alt`` and ``scripted``, classes
``player`` and ``spectator``) and/or the scripted datalog, serves them with ``serve_all_registered`` on
``ServedEndpoint(PORT)``, and appends what they see to FILE as JSON lines (see ``scripted``). SDK logs
go to stderr. It runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys

import cogment

from conformance import cog_settings
from conformance.scripted import FileRecorder, make_actor_impl, make_datalog_impl, make_env_impl

SERVABLE = ("env", "actors", "datalog")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m conformance.components")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", required=True, help="file receiving one JSON line per record")
    parser.add_argument("--serve", default=",".join(SERVABLE), help="comma-separated subset of env,actors,datalog")
    args = parser.parse_args(argv)
    args.serve = [item for item in args.serve.split(",") if item]
    unknown = set(args.serve) - set(SERVABLE)
    if unknown or not args.serve:
        parser.error(f"--serve takes a non-empty subset of {SERVABLE}")
    return args


async def serve(args: argparse.Namespace) -> None:
    # A fresh Prometheus registry is not needed: None disables the SDK metrics (notes §9.9).
    context = cogment.Context(user_id="conformance-components", cog_settings=cog_settings, prometheus_registry=None)
    record = FileRecorder(args.events)
    # "alt" is registered first: the SDK falls back to the first registered implementation when the
    # orchestrator sends no impl_name, so a lost ``implementation`` shows up as impl "alt" in the records.
    if "env" in args.serve:
        context.register_environment(make_env_impl(record), "alt")
        context.register_environment(make_env_impl(record), "scripted")
    if "actors" in args.serve:
        context.register_actor(make_actor_impl(record), "alt", ["player", "spectator"])
        context.register_actor(make_actor_impl(record), "scripted", ["player", "spectator"])
    if "datalog" in args.serve:
        context.register_datalog(make_datalog_impl(record))
    record({"role": "process", "kind": "serving", "port": args.port, "serve": args.serve})
    await context.serve_all_registered(cogment.ServedEndpoint(args.port))


def die_with_parent() -> None:
    """Exit on SIGTERM when the test process dies (Linux), so no component outlives a killed test run."""
    parent = os.environ.get("CONFORMANCE_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        sys.exit(1)


def main() -> None:
    die_with_parent()
    args = parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
