"""Tutorial step 2: the sample producer turns each step into a training sample.

Step 1 started trials and logged what the datastore received. Now the sample producer turns each
step of a trial into the sample that behavioral cloning learns from:

    (demonstration, observation, action)

* ``action`` is the action the environment performed: the teacher's whenever the teacher acted,
  the player's when the teacher approved (NO-OP). ``apprentice.teaching.decide`` is the rule, the
  very function the environment used to play the step, so a sample always says what happened.
* ``demonstration`` is True when the action is the teacher's.
* ``observation`` and ``action`` are torch tensors, ready for a network (step 3) and training (step 4).

The run receives these samples from ``start_and_await_trials`` and logs them. The actor still
plays at random.

Run it:

    python -m main +experiment=simple_bc/mountain_car teacher=scripted \\
        run.class_name=actors.tutorial.tutorial_2.SimpleBCTraining \\
        services.actors.simple_bc.class_name=actors.tutorial.tutorial_2.SimpleBCActor
"""

from __future__ import annotations

import logging

import cogment

# --- changed in step 2: numpy and torch for the samples; the helpers that read a datastore sample.
import numpy as np
import torch

from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig
from apprentice.run import RunSession, SampleProducerSession
from apprentice.spaces import ActionSpace, array_from_tensor, environment_specs, gym_from_space, is_noop
from apprentice.teaching import TeacherMode, decide

log = logging.getLogger(__name__)


# --- The actor (unchanged) ---------------------------------------------------------------------


class SimpleBCActor:
    """The ``player``: one random action per observation, from the action space of the trial."""

    def __init__(self, cfg: dict, model_registry) -> None:
        # Built once per components process; the model registry is of no use before step 3.
        self.model_registry = model_registry

    def get_actor_classes(self) -> list[str]:
        return ["player"]

    async def impl(self, actor_session) -> None:
        """Serves one trial: called by the components for every trial that needs a player."""
        config: ActorConfig = actor_session.config
        # The run put the environment's spaces in the actor's config: no need to build the env here.
        action_space = gym_from_space(config.environment_specs.action_space)
        action_space.seed(config.seed)
        actor_session.start()
        async for event in actor_session.all_events():
            if event.observation is not None and event.type == cogment.EventType.ACTIVE:
                actor_session.do_action(ActionSpace(action_space).create(value=action_space.sample()))


# --- The run -----------------------------------------------------------------------------------


class SimpleBCTraining:
    """The run; ``cfg`` is the ``run`` section of the experiment config."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        # Build the gymnasium env once to read its spaces; every actor config carries them.
        self.environment_specs = environment_specs(cfg.env_id)

    def trial_parameters(self, run_session: RunSession, trial_index: int) -> cogment.TrialParameters:
        """One trial: the gym environment, our ``player`` and the ``teacher`` chosen by ``teacher=...``."""
        cfg = self.cfg
        human = cfg.teacher.implementation == "client"
        actor_config = ActorConfig(environment_specs=self.environment_specs, seed=cfg.seed + trial_index)
        actors = [run_session.actor_parameters("player", "player", cfg.player.implementation, actor_config)]
        if cfg.teacher.implementation:
            # A person may close the browser tab: their slot is optional, and then stays NO-OP.
            teacher_options = {"optional": True, "default_action": ActionSpace.from_specs(self.environment_specs, with_noop=True).create()} if human else {}
            actors.append(
                run_session.actor_parameters("teacher", "teacher", cfg.teacher.implementation, actor_config, **teacher_options)
            )
        environment_config = EnvironmentConfig(
            env_id=cfg.env_id, seed=cfg.seed + trial_index, render=human, teacher_mode=TeacherMode.OVERRIDE.value
        )
        return run_session.trial_parameters(environment_config, actors)

    # --- changed in step 2: the sample producer produces (demonstration, observation, action).
    async def sample_producer(self, session: SampleProducerSession) -> None:
        """Runs once per trial, while it runs: one datastore sample per tick comes in."""
        action_space = gym_from_space(self.environment_specs.action_space)
        produced, demonstrations = 0, 0
        async for sample in session.all_trial_samples():
            player = sample.actors_data["player"]
            teacher = sample.actors_data.get("teacher")  # absent from trials without a teacher
            if is_noop(player.action):
                continue  # the last tick: the final observation, with no action after it
            # The override rule, as the environment applied it: the teacher's action if it gave one.
            step = decide(player.action, teacher.action if teacher else None, action_space)
            observation = torch.as_tensor(array_from_tensor(player.observation.value), dtype=torch.float32).reshape(-1)
            # In override mode the performed action is also what the agent should learn (step.label).
            action = torch.as_tensor(np.asarray(step.performed_action))
            session.produce_sample((step.demonstration, observation, action))
            produced += 1
            demonstrations += step.demonstration
        log.info("trial %s: ended, %d samples produced, %d demonstrations", session.trial_id, produced, demonstrations)

    async def impl(self, run_session: RunSession) -> None:
        cfg = self.cfg
        # What this run is, for MLflow (python -m simple_mlflow shows it on http://localhost:3000).
        run_session.log_params(
            {
                "env_id": cfg.env_id,
                "teacher": cfg.teacher.implementation,
                "num_trials": cfg.num_trials,
                "seed": cfg.seed,
            }
        )
        trials = [(f"{run_session.run_id}-trial-{index}", self.trial_parameters(run_session, index)) for index in range(cfg.num_trials)]
        print(f"run {run_session.run_id}: starting {len(trials)} trials", flush=True)
        # --- changed in step 2: the run receives the samples, in order, and logs them.
        async for step, _trial_id, trial_index, sample in run_session.start_and_await_trials(trials, self.sample_producer):
            demonstration, observation, action = sample
            log.info(
                "sample %d (trial %d): demonstration=%s observation=%s action=%s",
                step,
                trial_index,
                demonstration,
                "[" + ", ".join(f"{value:.6g}" for value in observation.tolist()) + "]",
                action.tolist(),
            )
        print(f"run {run_session.run_id}: {len(trials)} trials done", flush=True)
