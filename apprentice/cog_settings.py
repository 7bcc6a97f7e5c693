"""Cogment settings of the Apprentice application, written by hand.

The official tooling generates this module from a ``cogment.yaml``; the SDK only needs the three
attributes below, so writing it directly saves a code generation step. Every component (environment,
actors, controller, datastore reader) passes this module to ``cogment.Context``.

Two actor classes share one observation and one action message:

* ``player`` is the agent being trained; it must act at every tick.
* ``teacher`` watches the same observations and may take over. Its action space is the player's
  plus one extra action, NO-OP ("I approve what the player does"), written as a ``PlayerAction``
  whose ``value`` is not set (``apprentice.spaces.ActionSpace(space, with_noop=True).create()``).
"""

from __future__ import annotations

from types import SimpleNamespace

import cogment

from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig, Observation, PlayerAction, TrialConfig

PLAYER_ACTOR_CLASS = "player"
TEACHER_ACTOR_CLASS = "teacher"

actor_classes = cogment.ActorClassList(
    cogment.ActorClass(
        name=PLAYER_ACTOR_CLASS,
        config_type=ActorConfig,
        action_space=PlayerAction,
        observation_space=Observation,
    ),
    cogment.ActorClass(
        name=TEACHER_ACTOR_CLASS,
        config_type=ActorConfig,
        action_space=PlayerAction,
        observation_space=Observation,
    ),
)

trial = SimpleNamespace(config_type=TrialConfig)

environment = SimpleNamespace(config_type=EnvironmentConfig)
