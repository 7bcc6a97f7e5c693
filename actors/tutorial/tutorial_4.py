"""Tutorial step 4: online training, the behavioral cloning itself.

Step 3 gave the player an untrained network. Now the run trains it on the samples as they arrive,
while the trials run:

* Every sample ``(demonstration, observation, performed action)`` goes into a buffer; with
  ``run.train_only_from_demonstration`` only the teacher's actions do.
* For each new sample, once the buffer holds a batch (``run.batch_size``, 32), one training step:
  a random batch from the buffer, cross-entropy between the network's scores and the actions,
  one Adam step (``run.learning_rate``).
* Every ``run.publish_every`` (100) training steps, the model is stored as a new iteration in the
  model registry, and ``model_iteration``, ``loss`` and ``total_samples`` go to MLflow.

The actor has not changed: it retrieves the latest iteration when its trial starts, so each trial
plays the newest model, and the teacher has less and less to correct.

Run it:

    python -m main +experiment=simple_bc/mountain_car teacher=scripted \\
        run.class_name=actors.tutorial.tutorial_4.SimpleBCTraining \\
        services.actors.simple_bc.class_name=actors.tutorial.tutorial_4.SimpleBCActor

and look at the metrics on http://localhost:3000 (``python -m simple_mlflow``).
"""

from __future__ import annotations

import io
import logging
from itertools import pairwise

import cogment
import gymnasium
import numpy as np
import torch
from torch import nn

from apprentice.model import Model
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig, EnvironmentSpecs
from apprentice.run import RunSession, SampleProducerSession
from apprentice.spaces import ActionSpace, array_from_tensor, environment_specs, gym_from_space, is_noop
from apprentice.teaching import TeacherMode, decide

log = logging.getLogger(__name__)

# Tiny networks gain nothing from several threads; they would only compete with the gRPC threads.
torch.set_num_threads(1)


# --- The model (unchanged) --------------------------------------------------------------------


class SimpleBCModel(Model):
    """An MLP policy: observation -> hidden layers with ReLU -> one logit per action.

    ``apprentice.model.Model`` brings ``store``/``publish`` (send an iteration to the registry) and
    ``retrieve_model`` (get one back); a model says how to rebuild itself from bytes. This one only
    handles Discrete action spaces (MountainCar's); ``actors/simple_bc.py`` handles Box too.
    """

    def __init__(self, model_id: str, environment_specs: EnvironmentSpecs, hidden_sizes: list[int], iteration: int = 0):
        super().__init__(model_id, iteration)
        self.environment_specs = environment_specs
        self.hidden_sizes = [int(size) for size in hidden_sizes]
        self.observation_space = gym_from_space(environment_specs.observation_space)
        self.action_space = gym_from_space(environment_specs.action_space)
        if not isinstance(self.action_space, gymnasium.spaces.Discrete):
            raise NotImplementedError(f"the tutorial's model needs a Discrete action space, not {self.action_space}")

        sizes = [int(np.prod(self.observation_space.shape)), *self.hidden_sizes]
        layers: list[nn.Module] = []
        for size_in, size_out in pairwise(sizes):
            layers += [nn.Linear(size_in, size_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], int(self.action_space.n)))
        self.network = nn.Sequential(*layers)

        # Observations go into the network scaled into [-1, 1] by the bounds of the space (where
        # they are finite). MountainCar's velocity stays within +-0.07 while its position spans 1.8:
        # unscaled, the network would hardly see the velocity, which decides the right push.
        low = np.asarray(self.observation_space.low, dtype=np.float32).reshape(-1)
        high = np.asarray(self.observation_space.high, dtype=np.float32).reshape(-1)
        bounded = np.isfinite(low) & np.isfinite(high) & (high > low)
        self.center = torch.as_tensor(np.where(bounded, (low + high) / 2, 0.0), dtype=torch.float32)
        self.half_range = torch.as_tensor(np.where(bounded, (high - low) / 2, 1.0), dtype=torch.float32)

    def logits(self, observations: torch.Tensor) -> torch.Tensor:
        """One score per action, for one observation or a batch of them (raw, as the env gives them)."""
        return self.network((observations - self.center) / self.half_range)

    @torch.inference_mode()
    def act(self, observation: np.ndarray) -> int:
        """The action with the highest score."""
        return int(self.logits(torch.as_tensor(observation, dtype=torch.float32).reshape(-1)).argmax())

    def get_model_user_data(self) -> dict[str, str]:
        # Shown next to each iteration in the registry; strings only.
        return {"env_id": self.environment_specs.env_id, "hidden_sizes": ",".join(map(str, self.hidden_sizes))}

    @classmethod
    def serialize_model(cls, model: SimpleBCModel) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                # What it takes to rebuild the network, then its weights.
                "environment_specs": model.environment_specs.SerializeToString(),
                "hidden_sizes": model.hidden_sizes,
                "state_dict": model.network.state_dict(),
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def deserialize_model(cls, serialized_model: bytes) -> SimpleBCModel:
        # weights_only=True: only tensors and plain containers come out; loading never runs code.
        content = torch.load(io.BytesIO(serialized_model), weights_only=True)
        model = cls("", EnvironmentSpecs.FromString(content["environment_specs"]), content["hidden_sizes"])
        model.network.load_state_dict(content["state_dict"])
        return model


# --- The actor (unchanged) --------------------------------------------------------------------


class SimpleBCActor:
    """The ``player``: plays the greedy action of the model its trial names."""

    def __init__(self, cfg: dict, model_registry) -> None:
        # Built once per components process; it shares one model registry client with every trial.
        self.model_registry = model_registry

    def get_actor_classes(self) -> list[str]:
        return ["player"]

    async def impl(self, actor_session) -> None:
        """Serves one trial: called by the components for every trial that needs a player."""
        config: ActorConfig = actor_session.config
        # The model named by the trial (iteration -1: the latest when the trial starts) decides.
        model = await SimpleBCModel.retrieve_model(self.model_registry, config.model_id, config.model_iteration)
        log.info("trial %s: playing model %s iteration %d", actor_session.get_trial_id(), model.model_id, model.iteration)
        actor_session.start()
        async for event in actor_session.all_events():
            if event.observation is not None and event.type == cogment.EventType.ACTIVE:
                observation = array_from_tensor(event.observation.observation.value)
                actor_session.do_action(ActionSpace(model.action_space).create(value=model.act(observation)))


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
        # The actors are told which model to play: the run's, its latest iteration.
        actor_config = ActorConfig(
            environment_specs=self.environment_specs,
            seed=cfg.seed + trial_index,
            model_id=run_session.run_id,
            model_iteration=-1,
        )
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
        registry = run_session.model_registry
        # Build the (untrained) model and store it before any trial needs it.
        torch.manual_seed(cfg.seed)
        model = SimpleBCModel(run_session.run_id, self.environment_specs, list(cfg.hidden_sizes))
        # store: an archived iteration, kept on disk (publish would keep it in memory only).
        await model.store(registry)
        print(f"run {run_session.run_id}: model {model.model_id} iteration {model.iteration} stored in the model registry", flush=True)

        # What this run is, for MLflow (python -m simple_mlflow shows it on http://localhost:3000).
        run_session.log_params(
            {
                "env_id": cfg.env_id,
                "teacher": cfg.teacher.implementation,
                "num_trials": cfg.num_trials,
                "seed": cfg.seed,
                "hidden_sizes": list(cfg.hidden_sizes),
                # --- changed in step 4: the training settings
                "learning_rate": cfg.learning_rate,
                "batch_size": cfg.batch_size,
                "train_only_from_demonstration": cfg.train_only_from_demonstration,
                "publish_every": cfg.publish_every,
            }
        )

        # --- changed in step 4: what training needs: an optimizer, a buffer of samples, counters.
        optimizer = torch.optim.Adam(model.network.parameters(), lr=cfg.learning_rate)
        generator = torch.Generator().manual_seed(cfg.seed)  # draws the batches
        observations: list[torch.Tensor] = []
        actions: list[torch.Tensor] = []
        total_samples, training_steps, loss_value = 0, 0, float("nan")

        async def store_iteration() -> None:
            await model.store(registry)
            run_session.log_metrics(training_steps, model_iteration=model.iteration, loss=loss_value, total_samples=total_samples)
            print(
                f"run {run_session.run_id}: iteration {model.iteration} stored after {training_steps} training steps, "
                f"loss {loss_value:.4f}, {total_samples} samples ({len(actions)} used for training)",
                flush=True,
            )

        trials = [(f"{run_session.run_id}-trial-{index}", self.trial_parameters(run_session, index)) for index in range(cfg.num_trials)]
        print(f"run {run_session.run_id}: starting {len(trials)} trials", flush=True)
        async for _step, _trial_id, _trial_index, sample in run_session.start_and_await_trials(trials, self.sample_producer):
            # --- changed in step 4: each sample goes into the buffer, then one training step on a random batch.
            demonstration, observation, action = sample
            total_samples += 1
            if cfg.train_only_from_demonstration and not demonstration:
                continue  # only learn what the teacher did
            observations.append(observation)
            actions.append(action)
            if len(actions) < cfg.batch_size:
                continue

            batch = torch.randint(len(actions), (cfg.batch_size,), generator=generator).tolist()
            batch_observations = torch.stack([observations[i] for i in batch])
            batch_actions = torch.stack([actions[i] for i in batch])
            loss = nn.functional.cross_entropy(model.logits(batch_observations), batch_actions)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            training_steps += 1
            loss_value = loss.item()

            # Storing costs a serialization and a transfer: every publish_every steps is plenty.
            if training_steps % cfg.publish_every == 0:
                await store_iteration()

        # --- changed in step 4: keep what the last training steps learnt.
        if training_steps % cfg.publish_every != 0:
            await store_iteration()
        print(f"run {run_session.run_id}: {len(trials)} trials done, model {model.model_id} iteration {model.iteration}", flush=True)
