"""``python -m apprentice.export RUN_ID --format npz|minari OUT``: a run's samples, out of the trial datastore, as a dataset file.

Every tick of a run's trials is in the trial datastore. This replays the stored ticks of each
trial of the run (the trials whose property ``apprentice_run_id`` is RUN_ID) through
``apprentice.episodes.EpisodeAssembler``, the same code a run's sample producer uses live, and
writes the whole episodes as one ``apprentice.datasets.Dataset``: an ``.npz`` file
(``--format npz``, OUT ends in .npz) or a Minari dataset (``--format minari``, OUT is a Minari
dataset id written under MINARI_DATASETS_PATH, else ~/.minari/datasets). The keys and fields of
both are documented in ``apprentice/datasets.py``. A BC run trains from either with
``run.dataset=OUT``.

The datastore is either a running one (``--datastore grpc://HOST:PORT``) or the one in a data dir
(``--data-dir``, default ``data`` as main's ``data_dir``): Apprentice's own services are then
started over it on a free port for the duration of the export. Don't point ``--data-dir`` at the
data dir of a run that is still going: give that run's services with ``--datastore``.

Only vectorized trials (``EnvironmentConfig.num_envs >= 1``, as BC and DAgger play) are
exported: the teacher's-page trials of simple_bc runs keep no episode numbers to assemble by.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cogment
from cogment.datastore import Datastore, DatastoreTrialInfo

from apprentice import cog_settings
from apprentice.datasets import NPZ_SUFFIX, Dataset, Episode, check_minari_id, save_minari, save_npz
from apprentice.episodes import EpisodeAssembler
from apprentice.launcher import start_python, wait_until_reachable
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig
from apprentice.run import RUN_ID_PROPERTY
from apprentice.spaces import gym_from_space
from apprentice.teaching import TeacherMode

FORMATS = ("npz", "minari")
DATASTORE_TIMEOUT = 10.0  # s for a --datastore endpoint to accept connections
KNOWN_RUNS_SHOWN = 10  # run ids listed when RUN_ID has no trials


class ExportError(ValueError):
    """The export cannot be done as asked; the message says why and what to give instead."""


@dataclass(frozen=True)
class Export:
    """A run's episodes and how they were found."""

    dataset: Dataset
    trials: int  # the run's vectorized trials
    unfinished_episodes: int  # episodes a trial stopped midway: not whole, left out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m apprentice.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_id", metavar="RUN_ID", help="the run (main's run id, printed as 'Run RUN_ID ...')")
    parser.add_argument("--format", required=True, choices=FORMATS, help="npz: an Apprentice .npz file; minari: a Minari dataset")
    parser.add_argument("out", metavar="OUT", help="the .npz path (--format npz) or the Minari dataset id, e.g. apprentice/hopper-bc-v0")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-dir", type=Path, default=Path("data"), help="main's data_dir holding the datastore (default: data)")
    source.add_argument("--datastore", metavar="grpc://HOST:PORT", help="a running trial datastore instead of --data-dir")
    return parser.parse_args(argv)


def check_out(format_name: str, out: str) -> None:
    """A bad OUT is refused before the datastore is read."""
    if format_name == "npz" and not out.endswith(NPZ_SUFFIX):
        raise ExportError(f"OUT={out!r}: --format npz writes a file whose name ends in {NPZ_SUFFIX}, e.g. hopper-bc.npz")
    if format_name == "minari":
        try:
            check_minari_id(out)
        except ValueError as error:
            raise ExportError(f"OUT={out!r}: {error}") from None


@contextlib.contextmanager
def datastore_endpoint(data_dir: Path, datastore: str | None) -> Iterator[str]:
    """The ``grpc://`` endpoint to read: ``datastore`` as given, else Apprentice's services over ``data_dir`` until the end."""
    if datastore:
        if not datastore.startswith("grpc://"):
            raise ExportError(f"--datastore={datastore!r}: give the datastore's endpoint as grpc://HOST:PORT")
        yield datastore
        return
    data_dir = data_dir.absolute()
    if not data_dir.is_dir():
        raise ExportError(f"--data-dir={data_dir}: no such directory; give main's data_dir of the run, or --datastore grpc://HOST:PORT")
    with tempfile.TemporaryDirectory(prefix="apprentice-export-") as log_dir:
        log_path = Path(log_dir) / "services.log"
        try:
            services = start_python("Cogment services", ["-m", "apprentice.services", "--port", "0", "--data-dir", str(data_dir)], log_path)
        except RuntimeError as error:
            raise ExportError(str(error)) from None
        try:
            yield services.endpoint
        finally:
            services.stop()


async def run_trials(datastore: Datastore, run_id: str) -> list[DatastoreTrialInfo]:
    """The run's trials, in the datastore's order (the order it learned of them)."""
    return [info async for info in datastore.all_trials(bundle_size=100, properties={RUN_ID_PROPERTY: run_id})]


async def known_run_ids(datastore: Datastore) -> list[str]:
    """The run ids of the stored trials, each once, in the order their first trial was started."""
    run_ids: dict[str, None] = {}
    async for info in datastore.all_trials(bundle_size=100):
        run_id = info.parameters.properties.get(RUN_ID_PROPERTY)
        if run_id:
            run_ids.setdefault(run_id)
    return list(run_ids)


def environment_config(info: DatastoreTrialInfo) -> EnvironmentConfig:
    return info.parameters.environment_config or EnvironmentConfig()


def assembler_for(info: DatastoreTrialInfo) -> EpisodeAssembler:
    """The assembler a run's sample producer builds for this trial: its copies, seed, teacher mode and the player's action space."""
    config = environment_config(info)
    player_config: ActorConfig = info.parameters.actors["player"].config
    action_space = gym_from_space(player_config.environment_specs.action_space)
    mode = TeacherMode(config.teacher_mode or TeacherMode.OVERRIDE.value)
    return EpisodeAssembler(action_space, config.num_envs, mode, config.seed, info.trial_id)


async def trial_episodes(datastore: Datastore, info: DatastoreTrialInfo) -> tuple[list[Episode], int]:
    """The whole episodes of one stored trial, in the order they ended, and how many it left unfinished."""
    assembler = assembler_for(info)
    episodes: list[Episode] = []
    async for sample in datastore.all_samples([info]):
        player = sample.actors_data["player"]
        teacher = sample.actors_data.get("teacher")
        if player.observation is None:
            continue
        episodes += assembler.add_tick(player.observation, player.action, teacher.action if teacher else None)
    return episodes, assembler.unfinished_episodes


async def export_run(endpoint: str, run_id: str, source: str) -> Export:
    """The whole episodes of ``run_id``'s vectorized trials, read from the datastore at ``endpoint`` (``source`` in messages).

    They come in the order of their reset seeds, the run's episode order: episode k of a roll-out
    plan is reset with its seed + k, and each DAgger round has seeds above the round before.
    """
    try:
        await wait_until_reachable(endpoint, DATASTORE_TIMEOUT)
    except RuntimeError as error:
        raise ExportError(f"{source}: {error}; give the endpoint of a running trial datastore, or --data-dir") from None
    datastore = cogment.Context(user_id="apprentice-export", cog_settings=cog_settings).get_datastore(cogment.Endpoint(endpoint))
    infos = await run_trials(datastore, run_id)
    if not infos:
        known = await known_run_ids(datastore)
        listed = ", ".join(known[-KNOWN_RUNS_SHOWN:]) if known else "none"
        raise ExportError(f"no trial of run {run_id!r} in the datastore of {source}; runs there (the latest {KNOWN_RUNS_SHOWN} at most): {listed}")
    vectorized = [info for info in infos if environment_config(info).num_envs >= 1]
    if not vectorized:
        raise ExportError(
            f"run {run_id!r} has {len(infos)} trials and none is vectorized (EnvironmentConfig.num_envs = 0, as the teacher's page plays): "
            "only the trials of BC and DAgger runs (num_envs >= 1) keep the episode numbers an export assembles episodes by"
        )
    env_id, make_kwargs = task_of(vectorized, run_id)
    episodes: list[Episode] = []
    unfinished = 0
    for info in vectorized:
        trial, left = await trial_episodes(datastore, info)
        episodes += trial
        unfinished += left
    if not episodes:
        raise ExportError(f"run {run_id!r}: its {len(vectorized)} trials finished no whole episode: nothing to export")
    episodes.sort(key=lambda episode: episode.seed)  # stable: trials in the datastore's order for equal seeds
    return Export(Dataset(env_id=env_id, make_kwargs=make_kwargs, episodes=episodes), len(vectorized), unfinished)


def task_of(infos: list[DatastoreTrialInfo], run_id: str) -> tuple[str, dict]:
    """The env id and make_kwargs every trial of the run played; a dataset holds one environment."""
    tasks = {(environment_config(info).env_id, environment_config(info).make_kwargs_json or "{}") for info in infos}
    if len(tasks) > 1:
        raise ExportError(f"run {run_id!r} played several environments ({sorted(tasks)}); a dataset holds the episodes of one")
    env_id, make_kwargs_json = tasks.pop()
    return env_id, json.loads(make_kwargs_json)


def write(dataset: Dataset, format_name: str, out: str) -> str:
    """Write ``dataset``; returns where it went."""
    if format_name == "npz":
        return str(save_npz(dataset, out).absolute())
    written = save_minari(dataset, out)
    return f"the Minari dataset {out} ({written.storage.data_path})"


def summary(export: Export, run_id: str, where: str) -> str:
    dataset = export.dataset
    dropped = f", {export.unfinished_episodes} unfinished episodes left out" if export.unfinished_episodes else ""
    return (f"run {run_id}: {dataset.num_episodes} episodes, {dataset.num_steps} steps, {dataset.num_demonstrations} demonstrations "
            f"of {dataset.env_id} from {export.trials} trials{dropped}, written to {where}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    source = f"--datastore {args.datastore}" if args.datastore else f"--data-dir {args.data_dir.absolute()}"
    try:
        check_out(args.format, args.out)
        with datastore_endpoint(args.data_dir, args.datastore) as endpoint:
            export = asyncio.run(export_run(endpoint, args.run_id, source))
        where = write(export.dataset, args.format, args.out)
    except (ValueError, OSError) as error:  # ExportError, a dataset that cannot be saved there, a file that cannot be written
        raise SystemExit(f"apprentice.export: {error}") from None
    print(summary(export, args.run_id, where), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
