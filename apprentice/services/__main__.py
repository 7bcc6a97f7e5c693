"""``python -m apprentice.services --port 9000 --data-dir DIR``: the Cogment services for any app."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from apprentice.launcher import exit_with_parent
from apprentice.services.server import start_services


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m apprentice.services",
        description=(
            "Serve a Cogment orchestrator, trial datastore and model registry on one gRPC port. "
            "Point Cogment SDK code at grpc://HOST:PORT for all three."
        ),
    )
    parser.add_argument("--port", type=int, default=9000, help="gRPC port (default 9000, 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="directory for the trial datastore (SQLite) and archived models; in memory when omitted",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args()


async def serve(args: argparse.Namespace) -> None:
    services = await start_services(port=args.port, data_dir=args.data_dir, host=args.host)
    # Tests and scripts that asked for port 0 read the real port from this line.
    print(f"Cogment services ready on grpc://{args.host}:{services.port}", flush=True)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    await stop_requested.wait()
    logging.getLogger(__name__).info("Stopping: ending running trials and flushing the datastore")
    await services.stop()


def main() -> None:
    exit_with_parent()
    args = parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except OSError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
