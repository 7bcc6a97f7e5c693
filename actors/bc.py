"""Behavioral cloning from an expert, with roll-outs played as Cogment trials (``+experiment=bc/<task>``).

Read top to bottom:
1. ``ImitationModel``: an MLP policy, or an ensemble of K of them (observations normalized by the
   data's mean and std), that the model registry can store; ``policy()`` is the numpy snapshot of
   its weights that acts on a whole batch of observations at once (``apprentice.ensemble``).
2. ``ImitationPlayer``: the ``player`` actor that acts with one iteration of the model.
3. The pieces DAgger shares (``actors/dagger.py``): the task and its checks, training epochs with a
   held-out validation loss, evaluation of the learner alone on fixed held-out seeds.
4. ``BCTraining``: the run. The expert plays ``run.rollouts`` episodes in the teacher's seat
   (``override`` mode; or ``run.dataset`` gives them from a file), the learner is trained on them
   for ``run.epochs`` epochs, evaluated alone, and stored in the model registry.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cogment
import gymnasium
import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from apprentice.datasets import Dataset, Episode, load_dataset
from apprentice.ensemble import EnsembleMLP, EnsemblePolicy, WeightAverage, member_batches, use_small_network_settings
from apprentice.experts import ExpertFileError, check_expert_fits, load_expert
from apprentice.help import HelpMode, HelpSettings, add_help_request, gate_for
from apprentice.model import RUN_FINISHED, Model
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentSpecs, PlayerAction
from apprentice.rollouts import RolloutPlan, TeacherSeat, collect_episodes
from apprentice.run import RunSession
from apprentice.settings import check_number
from apprentice.spaces import array_from_tensor, environment_specs, gym_from_space, tensor_from_array
from apprentice.teaching import TeacherMode

log = logging.getLogger(__name__)

use_small_network_settings()


# --- 1. The model ----------------------------------------------------------------------------


class ImitationModel(Model):
    """normalized observation -> hidden layers (ReLU) -> the action (Box) or one logit per action (Discrete).

    ``ensemble_size`` K > 1 makes it K such networks trained together on bootstrapped batches: the
    learner acts with their consensus and their disagreement is its uncertainty (``apprentice.ensemble``).
    """

    def __init__(self, model_id: str, environment_specs: EnvironmentSpecs, hidden_sizes: list[int], iteration: int = 0,
                 ensemble_size: int = 1) -> None:
        super().__init__(model_id, iteration)
        self.environment_specs = environment_specs
        self.hidden_sizes = list(hidden_sizes)
        self.ensemble_size = ensemble_size
        self.action_space = gym_from_space(environment_specs.action_space)
        self.discrete = isinstance(self.action_space, gymnasium.spaces.Discrete)
        observation_size = int(np.prod(gym_from_space(environment_specs.observation_space).shape))
        self.action_size = int(self.action_space.n) if self.discrete else int(np.prod(self.action_space.shape))
        self.network = EnsembleMLP([observation_size, *self.hidden_sizes, self.action_size], ensemble_size)
        # Set from the training data by ``fit_normalization``; identity until then.
        self.observation_mean = torch.zeros(observation_size)
        self.observation_std = torch.ones(observation_size)

    def fit_normalization(self, observations: torch.Tensor) -> None:
        """Normalize by the data's mean and std; a feature that never varies (e.g. Ant's unused contact forces) is left unscaled."""
        self.observation_mean = observations.mean(dim=0)
        std = observations.std(dim=0)
        self.observation_std = torch.where(std > 1e-6, std, torch.ones_like(std))

    def normalize(self, observations: torch.Tensor) -> torch.Tensor:
        return (observations - self.observation_mean) / self.observation_std

    def loss(self, normalized_observations: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean squared error (Box) or cross-entropy (Discrete) of the labels, averaged over the members.

        Observations (B, obs) are one batch for every member; (K, B, obs) give each member its own
        (bootstrapped) batch, with labels of the same leading axes. Adam scales each parameter's
        steps by its own gradients, so averaging rather than summing over the members changes nothing.
        """
        output = self.network(normalized_observations)  # (K, B, out)
        if normalized_observations.dim() == 2:
            labels = labels.expand(self.ensemble_size, *labels.shape)
        if self.discrete:
            return nn.functional.cross_entropy(output.flatten(0, 1), labels.flatten())
        return nn.functional.mse_loss(output, labels)

    def get_model_user_data(self) -> dict[str, str]:
        return {"env_id": self.environment_specs.env_id, "hidden_sizes": ",".join(map(str, self.hidden_sizes)),
                "ensemble_size": str(self.ensemble_size)}

    @classmethod
    def serialize_model(cls, model: ImitationModel) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "environment_specs": model.environment_specs.SerializeToString(),
                "hidden_sizes": model.hidden_sizes,
                "ensemble_size": model.ensemble_size,
                "state_dict": model.network.state_dict(),
                "observation_mean": model.observation_mean,
                "observation_std": model.observation_std,
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def deserialize_model(cls, serialized_model: bytes) -> ImitationModel:
        content = torch.load(io.BytesIO(serialized_model), weights_only=True)  # a model file never runs code
        model = cls("", EnvironmentSpecs.FromString(content["environment_specs"]), content["hidden_sizes"],
                    ensemble_size=content["ensemble_size"])
        model.network.load_state_dict(content["state_dict"])
        model.observation_mean, model.observation_std = content["observation_mean"], content["observation_std"]
        return model

    def policy(self) -> EnsemblePolicy:
        """The current weights as a numpy policy on batches (a snapshot: later training does not change it)."""
        return EnsemblePolicy(
            layers=self.network.numpy_layers(),
            observation_offset=self.observation_mean.numpy().copy(),
            observation_scale=self.observation_std.numpy().copy(),
            action_space=self.action_space,
            iteration=self.iteration,
        )


# --- 2. The actor ----------------------------------------------------------------------------


class ImitationPlayer:
    """The ``player`` of vectorized trials: acts with iteration ``ActorConfig.model_iteration`` (-1: the latest).

    With ``ActorConfig.help`` it also says, for each copy, whether it asks for help (``apprentice.help``).
    """

    def __init__(self, cfg: dict, model_registry) -> None:
        self.model_registry = model_registry

    def get_actor_classes(self) -> list[str]:
        return ["player"]

    async def impl(self, actor_session) -> None:
        config: ActorConfig = actor_session.config
        model = await ImitationModel.retrieve_model(self.model_registry, config.model_id, config.model_iteration)
        policy = model.policy()
        gate = gate_for(config)
        actor_session.start()
        async for event in actor_session.all_events():
            if event.observation is not None and event.type == cogment.EventType.ACTIVE:
                observation = event.observation.observation
                if not observation.episodes:
                    raise ValueError("the imitation player plays vectorized trials (EnvironmentConfig.num_envs >= 1)")
                decision = policy.decide(array_from_tensor(observation.value))
                action = PlayerAction(value=tensor_from_array(decision.actions))
                action.model_iteration = policy.iteration
                add_help_request(action, gate, decision.uncertainty)
                actor_session.do_action(action)


# --- 3. What BC and DAgger share: the task, training, evaluation ------------------------------


@dataclass(frozen=True)
class Task:
    """The environment of a run and its expert, checked before anything starts (``Task.from_config``)."""

    env_id: str
    make_kwargs: dict
    specs: EnvironmentSpecs
    teacher: str  # the teacher's actor implementation: "expert" or "scripted_teacher"
    expert_path: str  # "" for the scripted teacher

    @classmethod
    def from_config(cls, cfg, needs_teacher: bool = True) -> Task:
        """The task of ``cfg``; ``needs_teacher=False`` (BC from a dataset) skips the expert file."""
        make_kwargs = OmegaConf.to_container(cfg.make_kwargs) if OmegaConf.is_config(cfg.get("make_kwargs")) else dict(cfg.get("make_kwargs") or {})
        try:
            specs = environment_specs(cfg.env_id, make_kwargs)
        except gymnasium.error.Error as error:
            raise ValueError(f"run.env_id={cfg.env_id!r}: gymnasium cannot make it ({error}); give a registered id, e.g. Hopper-v4") from None
        teacher = cfg.teacher.implementation
        expert_path = ""
        if not needs_teacher:
            return cls(cfg.env_id, make_kwargs, specs, teacher, expert_path)
        if teacher == "expert":
            expert_path = str(Path(cfg.expert_path).expanduser().absolute())
            try:
                expert = load_expert(expert_path)
                check_expert_fits(expert, gym_from_space(specs.observation_space), gym_from_space(specs.action_space), cfg.env_id)
            except ExpertFileError as error:
                raise ValueError(f"expert.path: {error}") from None
        elif teacher != "scripted_teacher":
            raise ValueError(f"teacher={teacher!r}: behavioral cloning and DAgger learn from teacher=expert (or the scripted MountainCar teacher)")
        return cls(cfg.env_id, make_kwargs, specs, teacher, expert_path)

    def teacher_seat(self, mode: TeacherMode, **beta) -> TeacherSeat:
        return TeacherSeat(self.teacher, mode, self.expert_path, **beta)

    def make_env(self) -> gymnasium.Env:
        return gymnasium.make(self.env_id, **self.make_kwargs)


def check_settings(cfg, integers: tuple[str, ...], positive_numbers: tuple[str, ...]) -> None:
    """Every ``run.NAME`` listed is a positive integer / a positive number, or a ValueError says which is not."""
    for name in integers:
        check_number(cfg, name, minimum=1, example=EXAMPLES.get(name, 1), integer=True)
    for name in positive_numbers:
        check_number(cfg, name, minimum=0.0, example=EXAMPLES.get(name, 1), inclusive=False)
    check_number(cfg, "average_epochs", minimum=0, example=1, integer=True)
    if cfg.average_epochs > cfg.epochs:
        raise ValueError(f"run.average_epochs={cfg.average_epochs}: it cannot be more than run.epochs={cfg.epochs}; "
                         f"give at most that, e.g. run.average_epochs=1")
    fraction = cfg.validation_fraction
    if not isinstance(fraction, int | float) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"run.validation_fraction={fraction!r}: it must be in [0, 1), e.g. run.validation_fraction=0.1")


EXAMPLES = {"ensemble_size": 5, "rollouts": 10, "epochs": 100, "batch_size": 32, "learning_rate": 0.001, "envs_per_trial": 64, "parallel_trials": 2,
            "eval_episodes": 10, "rounds": 10, "rollouts_per_round": 1}


def transitions(episodes: list[Episode], demonstrations_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every step's observation and label (or only the teacher's labels), as tensors (float32 observations; int64 or float32 labels)."""
    observations = np.concatenate([episode.observations[:-1] for episode in episodes]).reshape(-1, episodes[0].observations[0].size)
    labels = np.concatenate([episode.labels for episode in episodes])
    if demonstrations_only:
        kept = np.concatenate([episode.demonstrations for episode in episodes])
        observations, labels = observations[kept], labels[kept]
    if np.issubdtype(labels.dtype, np.integer):
        label_tensor = torch.as_tensor(labels.reshape(-1), dtype=torch.int64)
    else:
        label_tensor = torch.as_tensor(labels.reshape(len(labels), -1), dtype=torch.float32)
    return torch.as_tensor(observations, dtype=torch.float32), label_tensor


def split_validation(count: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indexes of the training and the held-out validation transitions (a random ``fraction``, at least one when fraction > 0)."""
    order = torch.randperm(count, generator=generator)
    held_out = min(count - 1, max(1, round(count * fraction))) if fraction > 0 and count > 1 else 0
    return order[held_out:], order[:held_out]


@dataclass(frozen=True)
class EpochLosses:
    epoch: int
    training: float
    validation: float  # nan without a validation set


def train_epochs(model: ImitationModel, optimizer: torch.optim.Optimizer, observations: torch.Tensor, labels: torch.Tensor,
                 validation: torch.Tensor, epochs: int, batch_size: int, generator: torch.Generator, first_epoch: int = 0,
                 description: str = "epochs", average_epochs: int = 0) -> list[EpochLosses]:
    """``epochs`` passes over the training transitions in shuffled batches; the validation loss after each.

    Each member of an ensemble gets its own batches (``apprentice.ensemble.member_batches``: one
    member sees every transition once per epoch, several see bootstrap resamples of them).
    ``observations`` are normalized by the caller's model once, before the loop: the loop itself
    is a bare torch loop over tensors (bench/bc_training_speed.py compares the two).

    ``average_epochs`` > 0: the weights after every step of the last ``average_epochs`` epochs are
    averaged (``apprentice.ensemble.WeightAverage``, stochastic weight averaging at a constant
    learning rate), and the model ends with that average (the optimizer's moments are kept, so training can go on from
    it). Why: with a constant learning rate the weights keep wandering around a minimum, and on the
    locomotion tasks how often a snapshot falls swings with where it stopped (0 to ~7 falls in 50
    Walker2d episodes between DAgger rounds); their average falls as rarely as the expert does.
    The last epoch's validation loss is the averaged model's.
    """
    inputs = model.normalize(observations)
    training = torch.ones(len(inputs), dtype=torch.bool)
    training[validation] = False
    train_inputs, train_labels = inputs[training], labels[training]
    validation_inputs, validation_labels = inputs[validation], labels[validation]
    history = []
    average: WeightAverage | None = None
    last_epoch = first_epoch + epochs - 1
    for epoch in tqdm(range(first_epoch, first_epoch + epochs), desc=description, unit="epoch", leave=False):
        if average is None and epoch > last_epoch - average_epochs:
            average = WeightAverage(model.network)
        order = member_batches(len(train_inputs), model.ensemble_size, generator)  # (K, N)
        total, batches = 0.0, 0
        for start in range(0, order.shape[1], batch_size):
            batch = order[:, start : start + batch_size]
            loss = model.loss(train_inputs[batch], train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update()
            total, batches = total + loss.item(), batches + 1
        if average is not None and epoch == last_epoch:
            average.load_into_network()
        with torch.no_grad():
            validation_loss = model.loss(validation_inputs, validation_labels).item() if len(validation_inputs) else float("nan")
        history.append(EpochLosses(epoch, total / max(batches, 1), validation_loss))
    return history


def evaluate(policy, task: Task, episodes: int, first_seed: int) -> np.ndarray:
    """The return of each of ``episodes`` episodes of ``policy`` alone, seeds ``first_seed``, ``first_seed + 1``, ...

    The episodes run side by side (one batch per step) in this process: ``policy.act`` takes (N, obs).
    """
    envs = [task.make_env() for _ in range(episodes)]
    try:
        observations = [env.reset(seed=first_seed + index)[0] for index, env in enumerate(envs)]
        returns = np.zeros(episodes)
        playing = list(range(episodes))
        while playing:
            actions = policy.act(np.stack([observations[index] for index in playing]))
            still_playing = []
            for index, action in zip(playing, actions):
                observations[index], reward, terminated, truncated, _info = envs[index].step(action)
                returns[index] += float(reward)
                if not (terminated or truncated):
                    still_playing.append(index)
            playing = still_playing
        return returns
    finally:
        for env in envs:
            env.close()


def episode_returns(episodes: list[Episode]) -> np.ndarray:
    return np.array([float(episode.rewards.sum()) for episode in episodes])


def log_epochs(run_session: RunSession, history: list[EpochLosses], prefix: str = "") -> None:
    for losses in history:
        run_session.log_metrics(losses.epoch, **{f"{prefix}train_loss": losses.training, f"{prefix}validation_loss": losses.validation})


# --- 4. The run ------------------------------------------------------------------------------


class BCTraining:
    """Behavioral cloning; its settings are the ``run`` section of ``config/experiment/bc/<task>.yaml``."""

    def __init__(self, cfg) -> None:
        """Checks every setting and the expert file: a bad one stops ``main`` before anything starts (ValueError)."""
        self.cfg = cfg
        check_settings(cfg, ("rollouts", "epochs", "batch_size", "envs_per_trial", "parallel_trials", "eval_episodes", "ensemble_size"),
                       ("learning_rate",))
        if HelpSettings.from_config(cfg.help, cfg.ensemble_size).mode is HelpMode.ASK:
            raise ValueError("run.help.mode=ask: behavioral cloning's roll-outs are the expert's, the learner never plays them; "
                             "a learner asks for help in DAgger's rounds (+experiment=dagger/<task> run.help.mode=ask)")
        self.task = Task.from_config(cfg, needs_teacher=not cfg.get("dataset"))
        self.dataset: Dataset | None = None
        if cfg.get("dataset"):
            try:
                self.dataset = load_dataset(str(cfg.dataset))
            except (FileNotFoundError, ValueError) as error:
                raise ValueError(f"run.dataset={cfg.dataset}: {error}") from None
            # The env id alone is not enough: make_kwargs change the spaces (Ant's contact forces).
            shape = gym_from_space(self.task.specs.observation_space).shape
            found = self.dataset.episodes[0].observations.shape[1:] if self.dataset.episodes else None
            if self.dataset.env_id != cfg.env_id or found != shape:
                raise ValueError(
                    f"run.dataset={cfg.dataset}: its episodes are of {self.dataset.env_id} {self.dataset.make_kwargs} with observations "
                    f"of shape {found}, not of run.env_id={cfg.env_id} {self.task.make_kwargs} (shape {shape}): give a dataset of this task"
                )

    async def impl(self, run_session: RunSession) -> None:
        cfg, task = self.cfg, self.task
        registry = run_session.model_registry
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        model = ImitationModel(run_session.run_id, task.specs, list(cfg.hidden_sizes), ensemble_size=cfg.ensemble_size)
        await model.store(registry)  # the player's policy during the expert's roll-outs (it does not matter: the expert plays)
        run_session.log_params(run_parameters(cfg, task))

        started = time.perf_counter()
        if self.dataset is not None:
            episodes = self.dataset.episodes
            print(f"run {run_session.run_id}: {len(episodes)} episodes from {cfg.dataset}", flush=True)
        else:
            plan = RolloutPlan(cfg.rollouts, cfg.envs_per_trial, cfg.parallel_trials, cfg.seed)
            rollouts = await collect_episodes(run_session, "expert", task.env_id, task.make_kwargs, task.specs, plan,
                                              task.teacher_seat(TeacherMode.OVERRIDE), cfg.player.implementation, model.iteration)
            episodes = rollouts.episodes
            steps_per_second = rollouts.steps / max(rollouts.seconds, 1e-9)
            print(f"run {run_session.run_id}: {len(episodes)} expert roll-outs, {rollouts.steps} steps in {rollouts.seconds:.1f} s "
                  f"({steps_per_second:.0f} steps/s), return {episode_returns(episodes).mean():.1f}", flush=True)
            run_session.log_metrics(0, expert_rollout_return=float(episode_returns(episodes).mean()), rollout_steps_per_second=steps_per_second)
        if not episodes:
            raise RuntimeError("no whole episode was played: nothing to learn from (see the components' log)")

        observations, labels = transitions(episodes)
        _train, validation = split_validation(len(observations), cfg.validation_fraction, generator)
        training_mask = torch.ones(len(observations), dtype=torch.bool)
        training_mask[validation] = False
        model.fit_normalization(observations[training_mask])
        optimizer = model.network.adam(cfg.learning_rate)
        training_started = time.perf_counter()
        history = train_epochs(model, optimizer, observations, labels, validation, cfg.epochs, cfg.batch_size, generator,
                               average_epochs=cfg.average_epochs)
        training_seconds = time.perf_counter() - training_started
        log_epochs(run_session, history)

        returns = evaluate(model.policy(), task, cfg.eval_episodes, cfg.eval_seed)
        expert_labels = sum(int(episode.demonstrations.sum()) for episode in episodes)
        figures = {
            "eval_return_mean": float(returns.mean()), "eval_return_std": float(returns.std()), "expert_labels": expert_labels,
            "rollouts": len(episodes), "validation_loss": history[-1].validation, "training_seconds": training_seconds,
            "wall_seconds": time.perf_counter() - started,
        }
        run_session.log_metrics(cfg.epochs, **figures)
        await model.store(registry, **figures, **{RUN_FINISHED: "true"})
        print(f"run {run_session.run_id}: BC return alone {returns.mean():.1f} ± {returns.std():.1f} over {cfg.eval_episodes} episodes, "
              f"{expert_labels} expert-labelled steps, validation loss {history[-1].validation:.4f}", flush=True)


def run_parameters(cfg, task: Task) -> dict:
    """The run's settings as MLflow parameters."""
    names = ("rollouts", "epochs", "average_epochs", "batch_size", "learning_rate", "hidden_sizes", "ensemble_size", "envs_per_trial", "parallel_trials", "seed",
             "eval_episodes", "eval_seed", "validation_fraction", "rounds", "rollouts_per_round", "dataset")
    parameters = {name: cfg.get(name) for name in names if cfg.get(name) is not None}
    parameters["hidden_sizes"] = list(cfg.hidden_sizes)
    return {**parameters, "env_id": task.env_id, "teacher": task.teacher, "expert_path": task.expert_path}
