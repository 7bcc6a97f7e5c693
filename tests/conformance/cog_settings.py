"""Hand-written ``cog_settings`` for the conformance suite (protocol notes §9.11).

No ``cogment.yaml`` and no ``cogment generate``: any protobuf message class can serve as a space or a
config type, so the well-known wrapper messages are used.

* Observations and actions are ``Int64Value``. The scripted environment encodes the tick and the actor
  index in every observation (``tick * 1000 + actor_index``) and the scripted actors answer
  ``observation + 1``, so both directions of routing can be checked.
* Every config (trial, environment, actor) is a ``StringValue`` holding a JSON document that tells the
  scripted implementations (``conformance.scripted``) how to behave in that trial.
"""

from types import SimpleNamespace

import cogment
from google.protobuf import wrappers_pb2

actor_classes = cogment.actor.ActorClassList(
    cogment.actor.ActorClass(
        name="player",
        config_type=wrappers_pb2.StringValue,
        action_space=wrappers_pb2.Int64Value,
        observation_space=wrappers_pb2.Int64Value,
    ),
    cogment.actor.ActorClass(
        name="spectator",
        config_type=wrappers_pb2.StringValue,
        action_space=wrappers_pb2.Int64Value,
        observation_space=wrappers_pb2.Int64Value,
    ),
)

trial = SimpleNamespace(config_type=wrappers_pb2.StringValue)

environment = SimpleNamespace(config_type=wrappers_pb2.StringValue)
