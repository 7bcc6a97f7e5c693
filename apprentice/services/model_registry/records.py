"""What the registry knows about models and versions, independent of gRPC and of storage.

Plain frozen dataclasses so the store can hand them out freely; conversion to the Cogment protos
and to the JSON metadata files lives here too, so both formats stay in one place.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cogment.api import model_registry_pb2


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy. Its keys are interned: a record stays in memory for every archived
    version, and the versions of a model repeat the same keys (values mostly differ)."""
    return MappingProxyType({sys.intern(str(key)): value for key, value in mapping.items()})


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A model: an id and free key/value properties (the SDK's ``ModelInfo.properties``)."""

    model_id: str
    user_data: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_data", _frozen(self.user_data))

    def to_proto(self) -> model_registry_pb2.ModelInfo:
        return model_registry_pb2.ModelInfo(model_id=self.model_id, user_data=dict(self.user_data))

    def to_json(self) -> bytes:
        return json.dumps({"model_id": self.model_id, "user_data": dict(self.user_data)}, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ModelRecord:
        document: dict[str, Any] = json.loads(raw)
        return cls(model_id=str(document["model_id"]), user_data=_str_dict(document.get("user_data")))


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """The metadata of one model version (the SDK's ``ModelIterationInfo``), without its data.

    One is kept in memory per archived version for the life of the process: slots, and the
    model id shared with the model's record.
    """

    model_id: str
    number: int
    creation_timestamp: int  # nanoseconds since the Unix epoch
    archived: bool
    data_hash: str  # base64 (standard, padded) of the SHA-256 of the data
    data_size: int
    user_data: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_id", sys.intern(self.model_id))
        object.__setattr__(self, "user_data", _frozen(self.user_data))

    def to_proto(self) -> model_registry_pb2.ModelVersionInfo:
        return model_registry_pb2.ModelVersionInfo(
            model_id=self.model_id,
            version_number=self.number,
            creation_timestamp=self.creation_timestamp,
            archived=self.archived,
            data_hash=self.data_hash,
            data_size=self.data_size,
            user_data=dict(self.user_data),
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "model_id": self.model_id,
                "version_number": self.number,
                "creation_timestamp": self.creation_timestamp,
                "archived": self.archived,
                "data_hash": self.data_hash,
                "data_size": self.data_size,
                "user_data": dict(self.user_data),
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VersionRecord:
        document: dict[str, Any] = json.loads(raw)
        return cls(
            model_id=str(document["model_id"]),
            number=int(document["version_number"]),
            creation_timestamp=int(document["creation_timestamp"]),
            archived=bool(document["archived"]),
            data_hash=str(document["data_hash"]),
            data_size=int(document["data_size"]),
            user_data=_str_dict(document.get("user_data")),
        )


def _str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(key): str(item) for key, item in value.items()}
