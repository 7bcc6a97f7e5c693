"""Registry errors, each tied to the gRPC status code the official Go registry uses for it.

The store raises these; the servicer turns them into ``context.abort(code, message)``. Messages
are sent to the client as is, so they say what is wrong and how to fix it.
"""

from __future__ import annotations

import grpc


class RegistryError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class UnknownModel(RegistryError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, model_id: str, detail: str = "") -> None:
        super().__init__(
            f"No model {model_id!r} in the model registry{detail}. Create it first with "
            "CreateOrUpdateModel (the SDK's publish_model/store_model do it for you), "
            "or check the name with RetrieveModels (SDK: list_models)."
        )


class UnknownVersion(RegistryError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidRequest(RegistryError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ShuttingDown(RegistryError):
    # The SDK treats UNAVAILABLE as "communication lost" and stops tracking quietly.
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("The model registry is shutting down; reconnect once it is back.")
