"""Tutorial step 1: a player that acts at random, and a run that starts trials.

Two classes, the same two that every step of the tutorial (and ``actors/simple_bc.py``) has:

* ``SimpleBCActor`` is the ``player`` actor, served by the components process
  (``config/services/actor/simple_bc.yaml`` names it). For now it answers every observation with a
  random action drawn from the environment's action space.
* ``SimpleBCTraining`` is the run, built by ``main.py`` from the ``run`` section of the experiment
  config (``config/experiment/simple_bc/mountain_car.yaml``). It records its parameters in MLflow,
  builds the parameters of each trial and starts the trials. For each trial, its sample producer
  reads the steps the trial datastore receives, while the trial runs; here it only logs them.

Run it (the scripted teacher takes over when the car is pushed the wrong way):

    python -m main +experiment=simple_bc/mountain_car teacher=scripted \\
        run.class_name=actors.tutorial.tutorial_1.SimpleBCTraining \\
        services.actors.simple_bc.class_name=actors.tutorial.tutorial_1.SimpleBCActor
"""

from __future__ import annotations

import logging

import cogment

from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig
from apprentice.run import RunSession, SampleProducerSession
from apprentice.spaces import ActionSpace, environment_specs, gym_from_space
from apprentice.teaching import TeacherMode

log = logging.getLogger(__name__)


# --- The actor ---------------------------------------------------------------------------------


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

    async def sample_producer(self, session: SampleProducerSession) -> None:
        """Runs once per trial, while it runs: one datastore sample per tick comes in."""
        received = 0
        async for sample in session.all_trial_samples():
            received += 1
            log.info("trial %s: sample of tick %d received (actors: %s)", session.trial_id, sample.tick_id, ", ".join(sample.actors_data))
        log.info("trial %s: ended, %d samples received", session.trial_id, received)

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
        async for _step, _trial_id, _trial_index, _sample in run_session.start_and_await_trials(trials, self.sample_producer):
            pass  # the sample producer does not produce anything yet: that is step 2
        print(f"run {run_session.run_id}: {len(trials)} trials done", flush=True)
