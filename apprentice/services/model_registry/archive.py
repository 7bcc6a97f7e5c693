"""Archived models and versions on disk, laid out so that a crash never leaves half a version.

Layout under ``data_dir/models/``::

    <model dir>/model.json        the model (id and properties)
    <model dir>/v000001.data      the bytes of archived version 1
    <model dir>/v000001.json      its metadata, written last: a version exists once this file does
    .incoming/<random>.part       uploads in progress
    .trash-<random>/              models being deleted

Every file appears through ``os.replace`` of a fully written and fsynced temporary file, and a
model is deleted by renaming its directory away first. Leftovers of a crash (parts, temporary
files, data without metadata, trash) are removed by ``load()``.

Every method here blocks on the disk: the store calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from apprentice.services.model_registry.records import ModelRecord, VersionRecord

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
INCOMING_DIR = ".incoming"
TRASH_PREFIX = ".trash-"
TEMP_SUFFIX = ".tmp"
_VERSION_FILE = re.compile(r"v(\d+)\.json")
# Keeps directory names well below the usual 255-byte limit of file names.
_MAX_READABLE_DIRNAME = 150


def model_dirname(model_id: str) -> str:
    """A directory name for any model id: readable when possible, never clashing, never hidden.

    Percent-encoding (with ``.`` encoded too) is reversible, hence unique; ids too long for a file
    name use a hash, marked with ``%h``, which percent-encoding never produces.
    """
    readable = quote(model_id, safe="").replace(".", "%2E")
    if len(readable) <= _MAX_READABLE_DIRNAME:
        return readable
    return "%h" + hashlib.sha256(model_id.encode()).hexdigest()


def version_stem(number: int) -> str:
    return f"v{number:06d}"


@dataclass
class LoadedModel:
    model: ModelRecord
    versions: list[VersionRecord] = field(default_factory=list)  # ascending numbers


class UploadFile:
    """The data of an archived version being received, written to a temporary file."""

    on_disk = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by finish() or discard()

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def finish(self) -> None:
        """Make the data durable before the version is announced."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class DiskArchive:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / INCOMING_DIR

    def model_dir(self, model_id: str) -> Path:
        return self.root / model_dirname(model_id)

    def data_path(self, model_id: str, number: int) -> Path:
        return self.model_dir(model_id) / f"{version_stem(number)}.data"

    def load(self) -> list[LoadedModel]:
        """Every archived model and version, after removing what a crash may have left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir()
        loaded = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(TRASH_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_dir() and not entry.name.startswith("."):
                model = self._load_model(entry)
                if model is not None:
                    loaded.append(model)
        return loaded

    def save_model(self, model: ModelRecord) -> None:
        directory = self.model_dir(model.model_id)
        directory.mkdir(exist_ok=True)
        _write_atomically(directory / MODEL_FILE, model.to_json())

    def remove_model(self, model_id: str) -> Path | None:
        """Make the model disappear at once (one rename); returns the trash to ``purge`` later."""
        directory = self.model_dir(model_id)
        if not directory.exists():
            return None
        trash = self.root / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        os.replace(directory, trash)
        _fsync_dir(self.root)
        return trash

    @staticmethod
    def purge(trash: Path) -> None:
        shutil.rmtree(trash, ignore_errors=True)

    def new_upload(self) -> UploadFile:
        return UploadFile(self.incoming / f"{uuid.uuid4().hex}.part")

    def install_version(self, upload: UploadFile, version: VersionRecord) -> Path:
        """Move finished upload data into place, then write the metadata that makes it a version."""
        directory = self.model_dir(version.model_id)
        if not (directory / MODEL_FILE).exists():
            raise FileNotFoundError(f"model directory {directory} disappeared while the version was stored")
        data_path = directory / f"{version_stem(version.number)}.data"
        os.replace(upload.path, data_path)
        _write_atomically(directory / f"{version_stem(version.number)}.json", version.to_json())
        return data_path

    def _load_model(self, directory: Path) -> LoadedModel | None:
        try:
            model = ModelRecord.from_json((directory / MODEL_FILE).read_bytes())
        except (OSError, ValueError, KeyError) as error:
            log.warning("Skipping %s: no readable %s (%s)", directory, MODEL_FILE, error)
            return None
        if directory.name != model_dirname(model.model_id):
            log.warning("Skipping %s: it holds model %r, which belongs elsewhere", directory, model.model_id)
            return None
        loaded = LoadedModel(model)
        described: set[str] = set()
        for path in directory.iterdir():
            if path.name.endswith(TEMP_SUFFIX):
                path.unlink(missing_ok=True)
                continue
            match = _VERSION_FILE.fullmatch(path.name)
            if match is None:
                continue
            version = self._load_version(path, model.model_id, int(match.group(1)))
            if version is not None:
                loaded.versions.append(version)
                described.add(f"{version_stem(version.number)}.data")
        for path in directory.glob("v*.data"):
            if path.name not in described:
                # Data whose metadata was never written: the process died while storing it.
                log.info("Removing %s: its version was never completed", path)
                path.unlink(missing_ok=True)
        loaded.versions.sort(key=lambda version: version.number)
        return loaded

    @staticmethod
    def _load_version(path: Path, model_id: str, number: int) -> VersionRecord | None:
        try:
            version = VersionRecord.from_json(path.read_bytes())
        except (OSError, ValueError, KeyError) as error:
            log.warning("Skipping %s: unreadable version metadata (%s)", path, error)
            return None
        data_path = path.with_suffix(".data")
        actual_size = data_path.stat().st_size if data_path.exists() else None
        if version.model_id != model_id or version.number != number or actual_size != version.data_size:
            log.warning(
                "Skipping %s: it does not match its model %r, its number %d or the size of %s",
                path, model_id, number, data_path.name,
            )
            return None
        return version



def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    with open(temporary, "wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (the directory entry itself must reach the disk)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
