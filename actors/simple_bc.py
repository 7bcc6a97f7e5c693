"""Behavioral cloning with a teacher in the loop (the full version of tutorial step 4).

Read top to bottom:
1. ``SimpleBCModel``: an MLP policy (or an ensemble of K of them) that the model registry can
   store, trained with torch; ``policy()`` is the numpy snapshot of its weights that acts
   (``apprentice.ensemble.EnsemblePolicy``).
2. ``SimpleBCActor``: the ``player`` that acts with the latest published iteration.
3. ``SimpleBCTraining``: the run. It publishes an untrained model, starts trials one after
   another, turns each step into a sample ``(demonstration, observation, action)`` and trains
   online on them, publishing a new iteration every ``publish_every`` training steps.

The teacher (a person in the browser, or a scripted teacher) can take over at any step; doing
nothing (NO-OP) approves the agent's action. ``apprentice.teaching.decide`` is the rule.
"""

from __future__ import annotations

import io
import logging
import statistics
from dataclasses import dataclass, field

import cogment
import gymnasium
import numpy as np
import torch
from torch import nn

from actors.scripted_teacher import SUPPORTED_ENV_IDS as SCRIPTED_TEACHER_ENV_IDS
from apprentice.ensemble import EnsembleMLP, EnsemblePolicy, use_small_network_settings
from apprentice.help import HelpMode, HelpSettings, add_help_request, gate_for, uncertainty_quantiles
from apprentice.model import RUN_FINISHED, Model
from apprentice.model_follower import FollowedModel, ModelFollowers
from apprentice.protos.data_pb2 import ActorConfig, EnvironmentConfig, EnvironmentSpecs
from apprentice.run import RunSession, SampleProducerSession
from apprentice.sample_buffer import SampleBuffer
from apprentice.settings import check_number
from apprentice.spaces import ActionSpace, array_from_tensor, environment_specs, gym_from_space, is_noop
from apprentice.teaching import TeacherMode, decide

log = logging.getLogger(__name__)

use_small_network_settings()


# --- 1. The model ----------------------------------------------------------------------------


class SimpleBCModel(Model):
    """observation -> hidden layers (ReLU) -> one logit per action (Discrete) or the action (Box).

    ``ensemble_size`` K > 1 makes it K such networks trained together on bootstrapped batches: the
    agent acts with their consensus and their disagreement is its uncertainty (``apprentice.ensemble``).
    """

    def __init__(self, model_id: str, environment_specs: EnvironmentSpecs, hidden_sizes: list[int], iteration: int = 0,
                 ensemble_size: int = 1):
        super().__init__(model_id, iteration)
        self.environment_specs = environment_specs
        self.hidden_sizes = list(hidden_sizes)
        self.ensemble_size = ensemble_size
        self.training_steps = 0  # saved with the weights, so a resumed run keeps counting
        self.observation_space = gym_from_space(environment_specs.observation_space)
        self.action_space = gym_from_space(environment_specs.action_space)
        self.discrete = isinstance(self.action_space, gymnasium.spaces.Discrete)
        observation_size = int(np.prod(self.observation_space.shape))
        output_size = int(self.action_space.n) if self.discrete else int(np.prod(self.action_space.shape))
        self.network = EnsembleMLP([observation_size, *self.hidden_sizes, output_size], ensemble_size)
        unbounded = np.full(observation_size, np.inf, dtype=np.float32)
        low = np.asarray(getattr(self.observation_space, "low", -unbounded), dtype=np.float32).reshape(-1)
        high = np.asarray(getattr(self.observation_space, "high", unbounded), dtype=np.float32).reshape(-1)
        bounded = np.isfinite(low) & np.isfinite(high) & (high > low)
        low, high = np.where(bounded, low, -1.0), np.where(bounded, high, 1.0)  # unbounded: left as they are
        self._observation_center = ((low + high) / 2).astype(np.float32)
        self._observation_half_range = ((high - low) / 2).astype(np.float32)

    def get_model_user_data(self) -> dict[str, str]:
        return {"env_id": self.environment_specs.env_id, "hidden_sizes": ",".join(map(str, self.hidden_sizes)),
                "ensemble_size": str(self.ensemble_size)}

    @classmethod
    def serialize_model(cls, model: SimpleBCModel) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "environment_specs": model.environment_specs.SerializeToString(),
                "hidden_sizes": model.hidden_sizes,
                "ensemble_size": model.ensemble_size,
                "training_steps": model.training_steps,
                "state_dict": model.network.state_dict(),
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def deserialize_model(cls, serialized_model: bytes) -> SimpleBCModel:
        # weights_only: a model file can never run code when it is loaded.
        content = torch.load(io.BytesIO(serialized_model), weights_only=True)
        specs = EnvironmentSpecs.FromString(content["environment_specs"])
        model = cls("", specs, content["hidden_sizes"], ensemble_size=content["ensemble_size"])
        model.network.load_state_dict(content["state_dict"])
        model.training_steps = content["training_steps"]
        return model

    def observation_tensor(self, observation: np.ndarray) -> torch.Tensor:
        """Observations scaled into [-1, 1] by the space's bounds when they are finite.

        MountainCar's velocity lives within +-0.07 while its position spans 1.8: unscaled, the
        network barely sees the one feature that decides the right push.
        """
        values = np.asarray(observation, dtype=np.float32).reshape(-1)
        return torch.as_tensor((values - self._observation_center) / self._observation_half_range)

    def action_tensor(self, action) -> torch.Tensor:
        if self.discrete:
            return torch.tensor(int(action), dtype=torch.int64)
        return torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(-1))

    def policy(self) -> EnsemblePolicy:
        """The policy of the current weights, to act with (a snapshot: later training does not change it)."""
        return EnsemblePolicy(
            layers=self.network.numpy_layers(),
            observation_offset=self._observation_center,
            observation_scale=self._observation_half_range,
            action_space=self.action_space,
            iteration=self.iteration,
        )

    def loss(self, observations: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted cross-entropy (Discrete) or squared error (Box) of the labels, averaged over the members.

        Each member has its own batch: observations (K, B, obs), actions (K, B[, action]), weights (K, B).
        """
        output = self.network(observations)  # (K, B, out)
        if self.discrete:
            per_sample = nn.functional.cross_entropy(output.flatten(0, 1), actions.flatten(), reduction="none").view(weights.shape)
        else:
            per_sample = ((output - actions) ** 2).mean(dim=2)
        return ((per_sample * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-8)).mean()


# --- 2. The actor ----------------------------------------------------------------------------


class SimpleBCActor:
    """The ``player``: acts with ``ActorConfig.model_id`` and switches to each newer iteration.

    The trials of one model share one follower of its latest iteration (``apprentice.model_follower``
    says why); a trial that pins ``model_iteration`` plays that iteration only.
    """

    def __init__(self, cfg: dict, model_registry) -> None:
        self.model_registry = model_registry
        self.followers = ModelFollowers(model_registry, SimpleBCModel, SimpleBCModel.policy)

    def get_actor_classes(self) -> list[str]:
        return ["player"]

    async def impl(self, actor_session) -> None:
        config: ActorConfig = actor_session.config
        if config.model_iteration != -1:
            model = await SimpleBCModel.retrieve_model(self.model_registry, config.model_id, config.model_iteration)
            await self._play(actor_session, PinnedPolicy(model.policy()))
            return
        async with self.followers.follow(config.model_id) as latest:
            await self._play(actor_session, latest)

    async def _play(self, actor_session, policy: PinnedPolicy | FollowedModel[EnsemblePolicy]) -> None:
        """Act on each observation with ``policy.current``, read anew at each step; ask for help where unsure."""
        actions = ActionSpace(policy.current.action_space)  # every iteration of a model shares its spaces
        gate = gate_for(actor_session.config)
        actor_session.start()
        async for event in actor_session.all_events():
            if event.observation is not None and event.type == cogment.EventType.ACTIVE:
                observation = array_from_tensor(event.observation.observation.value)
                current = policy.current
                decision = current.decide(observation[np.newaxis])
                action = actions.create(value=decision.actions[0])
                action.model_iteration = current.iteration
                add_help_request(action, gate, decision.uncertainty)
                actor_session.do_action(action)


@dataclass(frozen=True)
class PinnedPolicy:
    """One iteration for the whole trial (``ActorConfig.model_iteration`` other than -1)."""

    current: EnsemblePolicy


# --- 3. The run: trials, samples, online training --------------------------------------------


@dataclass
class TrialSummary:
    """What the sample producer tells the run at the end of a trial (besides its samples)."""

    trial_index: int
    steps: int = 0
    total_return: float = 0.0
    demonstrations: int = 0  # steps the teacher took over
    approvals: int = 0  # steps the teacher explicitly approved
    asked: int = 0  # steps the agent asked for help at
    answered: int = 0  # of those, the steps the teacher answered (took over or approved)
    uncertainties: list[float] = field(default_factory=list)  # the agent's, per step (when it measures one)
    invalid_teacher_actions: int = 0
    teacher_seconds: float = 0.0  # time during which the teacher was acting (holding a key)
    # False when the samples ended before the environment's final observation: the trial was cut
    # short (the environment or an actor crashed, or the trial was hard-terminated).
    episode_over: bool = False

    def ended_early(self) -> bool:
        return not self.episode_over


class SimpleBCTraining:
    """Behavioral cloning run; its settings are the ``run`` section of the experiment config."""

    RESUMABLE = True  # resume=RUN_ID replays the run's stored samples and goes on from its last stored iteration

    def __init__(self, cfg) -> None:
        """Checks every setting: a bad one must stop ``main`` before anything starts (ValueError)."""
        self.cfg = cfg
        for name in ("num_trials", "batch_size", "publish_every", "evaluate_every"):
            check_number(cfg, name, minimum=1, example=EXAMPLE_SETTINGS[name], integer=True)
        check_number(cfg, "learning_rate", minimum=0.0, example=EXAMPLE_SETTINGS["learning_rate"], inclusive=False)
        check_number(cfg, "approval_weight", minimum=0.0, example=EXAMPLE_SETTINGS["approval_weight"])
        try:
            self.environment_specs = environment_specs(cfg.env_id)
        except gymnasium.error.Error as error:
            raise ValueError(f"run.env_id={cfg.env_id!r}: gymnasium cannot make it ({error}); give a registered id, e.g. MountainCar-v0") from None
        if cfg.teacher.implementation == "scripted_teacher" and cfg.env_id not in SCRIPTED_TEACHER_ENV_IDS:
            raise ValueError(
                f"teacher=scripted: the scripted teacher only knows {', '.join(SCRIPTED_TEACHER_ENV_IDS)}, not run.env_id={cfg.env_id!r}; "
                "teach this environment in the browser with teacher=human"
            )
        # Parsed here: a typo must stop the run before anyone teaches, not at the first evaluation.
        self.success_rule = SuccessRule.parse(cfg.get("eval_success", "terminated"))
        # Absent (a config written before them): one network that never asks.
        self.ensemble_size = cfg.get("ensemble_size", 1)
        check_number({"ensemble_size": self.ensemble_size}, "ensemble_size", minimum=1, example=5, integer=True)
        self.help = HelpSettings.from_config(cfg.get("help"), self.ensemble_size)
        if cfg.teacher.get("only_when_asked"):
            if self.help.mode is not HelpMode.ASK:
                raise ValueError("teacher=scripted_when_asked answers the agent's requests for help, and this agent never asks: "
                                 "add run.help.mode=ask run.ensemble_size=5 (or use +experiment=simple_bc/mountain_car_asks)")
            if not cfg.train_only_from_demonstration:
                raise ValueError("teacher=scripted_when_asked does not watch the steps it is not asked about, so its NO-OPs approve "
                                 "nothing: add run.train_only_from_demonstration=true (or use +experiment=simple_bc/mountain_car_asks)")

    # The teacher's slot: a scripted teacher served by the components, or a person through the
    # web page ("client"). A person may close the tab: the slot is optional and defaults to NO-OP.
    def trial_parameters(self, run_session: RunSession, trial_index: int) -> cogment.TrialParameters:
        cfg = self.cfg
        human = cfg.teacher.implementation == "client"
        actor_config = ActorConfig(
            environment_specs=self.environment_specs,
            seed=cfg.seed + trial_index,
            model_id=run_session.run_id,
            model_iteration=-1,
            help=self.help.message(),
        )
        actors = [run_session.actor_parameters("player", "player", cfg.player.implementation, actor_config)]
        if cfg.teacher.implementation:
            teacher_options = {"optional": True, "default_action": ActionSpace.from_specs(self.environment_specs, with_noop=True).create()} if human else {}
            teacher_config = ActorConfig(environment_specs=self.environment_specs, seed=cfg.seed + trial_index,
                                         only_when_asked=bool(cfg.teacher.get("only_when_asked", False)))
            actors.append(
                run_session.actor_parameters("teacher", "teacher", cfg.teacher.implementation, teacher_config, **teacher_options)
            )
        environment_config = EnvironmentConfig(
            env_id=cfg.env_id, seed=cfg.seed + trial_index, render=human, teacher_mode=TeacherMode.OVERRIDE.value
        )
        return run_session.trial_parameters(environment_config, actors)

    async def sample_producer(self, session: SampleProducerSession) -> None:
        """Each step becomes ``(demonstration, observation, label)``; a TrialSummary closes the trial."""
        action_space = gym_from_space(self.environment_specs.action_space)
        model = SimpleBCModel("", self.environment_specs, [])  # only for its tensor conversions
        summary = TrialSummary(session.trial_index)
        previous_timestamp, previous_was_demonstration = None, False
        async for sample in session.all_trial_samples():
            if previous_timestamp is not None and previous_was_demonstration:
                summary.teacher_seconds += (sample.timestamp - previous_timestamp) / 1e9
            previous_timestamp, previous_was_demonstration = sample.timestamp, False

            player = sample.actors_data["player"]
            teacher = sample.actors_data.get("teacher")
            if player.observation is not None and player.observation.final:
                summary.episode_over = True
            if is_noop(player.action):
                continue  # the final observation (after the last action), or a tick the player missed
            step = decide(player.action, teacher.action if teacher else None, action_space)
            observation = array_from_tensor(player.observation.value)
            # A label the teacher gave or explicitly approved counts as taught; a NO-OP is implicit approval.
            taught = step.demonstration or step.approved
            session.produce_sample((taught, model.observation_tensor(observation), model.action_tensor(step.label)))

            summary.steps += 1
            summary.total_return += player.reward or 0.0
            summary.demonstrations += step.demonstration
            summary.approvals += step.approved
            summary.asked += step.asked
            summary.answered += step.answered
            summary.uncertainties.append(step.uncertainty)
            summary.invalid_teacher_actions += step.invalid_teacher_action
            previous_was_demonstration = step.demonstration
        session.produce_sample(summary)

    async def impl(self, run_session: RunSession) -> None:
        cfg = self.cfg
        registry = run_session.model_registry
        torch.manual_seed(cfg.seed)
        model = SimpleBCModel(run_session.run_id, self.environment_specs, list(cfg.hidden_sizes), ensemble_size=self.ensemble_size)
        samples = SampleBuffer()
        first_trial, teacher_seconds = 0, 0.0

        if cfg.resume:
            # Nothing a teacher gave is lost: every stored sample of the run goes back into the buffer.
            model = await SimpleBCModel.retrieve_model(registry, run_session.run_id, -1)
            async for _trial_id, trial_index, sample in run_session.stored_samples(self.sample_producer):
                if isinstance(sample, TrialSummary):
                    first_trial = max(first_trial, trial_index + 1)
                    teacher_seconds += sample.teacher_seconds
                    continue
                samples.append(*sample)
            print(f"Resuming run {run_session.run_id} at iteration {model.iteration} with {len(samples)} stored samples")
        else:
            await model.store(registry)
            run_session.log_params(
                {
                    "env_id": cfg.env_id,
                    "hidden_sizes": list(cfg.hidden_sizes),
                    "ensemble_size": self.ensemble_size,
                    "help": {"mode": self.help.mode.value, "budget": self.help.budget, "threshold": self.help.threshold},
                    "learning_rate": cfg.learning_rate,
                    "batch_size": cfg.batch_size,
                    "train_only_from_demonstration": cfg.train_only_from_demonstration,
                    "approval_weight": cfg.approval_weight,
                    "publish_every": cfg.publish_every,
                    "teacher": cfg.teacher.implementation,
                    "num_trials": cfg.num_trials,
                    "seed": cfg.seed,
                }
            )

        optimizer = model.network.adam(cfg.learning_rate)
        generator = torch.Generator().manual_seed(cfg.seed)
        publications, loss_value, losses_since_publication, trials_played = 0, float("nan"), [], 0
        trials = [
            (f"{run_session.run_id}-trial-{index}", self.trial_parameters(run_session, index))
            for index in range(first_trial, first_trial + cfg.num_trials)
        ]
        async for _step, _trial_id, _index, sample in run_session.start_and_await_trials(trials, self.sample_producer):
            if isinstance(sample, TrialSummary):
                trials_played += 1
                teacher_seconds += sample.teacher_seconds
                intervention_rate = sample.demonstrations / max(sample.steps, 1)
                run_session.log_metrics(
                    model.training_steps,
                    trial_return=sample.total_return,
                    trial_steps=sample.steps,
                    intervention_rate=intervention_rate,
                    teacher_seconds=teacher_seconds,
                    demonstrations=samples.demonstration_count,
                    invalid_teacher_actions=sample.invalid_teacher_actions,
                    approval_rate=sample.approvals / max(sample.steps, 1),
                    teacher_actions=sample.demonstrations + sample.approvals,
                    asked_rate=sample.asked / max(sample.steps, 1),
                    answered_rate=sample.answered / max(sample.asked, 1),
                    **(uncertainty_quantiles(np.array(sample.uncertainties)) if self.help.mode is HelpMode.ASK else {}),
                )
                asked = f"  asked {sample.asked / max(sample.steps, 1):6.1%}" if self.help.mode is HelpMode.ASK else ""
                ended_early = f"  ended early: {TRIAL_CUT_SHORT}" if sample.ended_early() else ""
                print(
                    f"trial {first_trial + sample.trial_index + 1:3d}  steps {sample.steps:4d}  return {sample.total_return:8.1f}  "
                    f"intervention {intervention_rate:6.1%}{asked}  iteration {model.iteration:4d}  loss {loss_value:.4f}{ended_early}",
                    flush=True,
                )
                continue

            samples.append(*sample)
            population = samples.demonstration_count if cfg.train_only_from_demonstration else len(samples)
            if population < cfg.batch_size:
                continue

            # One training step per new sample, on a batch drawn from everything kept so far (with
            # replacement: one bootstrapped batch per member of the ensemble).
            picks = torch.randint(population, (model.ensemble_size, cfg.batch_size), generator=generator)
            indexes = samples.demonstration_indexes()[picks] if cfg.train_only_from_demonstration else picks
            demonstrations, observations, labels = samples.batch(indexes)
            weights = torch.where(demonstrations, 1.0, float(cfg.approval_weight))
            loss = model.loss(observations, labels, weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.training_steps += 1
            loss_value = loss.item()
            losses_since_publication.append(loss_value)
            run_session.log_metrics(model.training_steps, loss=loss_value, total_samples=len(samples))

            if model.training_steps % cfg.publish_every == 0:
                # The iteration carries its training figures: the web page draws the loss trend and the
                # success of the agent alone (when this publication is evaluated) from them.
                mean_loss = statistics.fmean(losses_since_publication)
                losses_since_publication.clear()
                publications += 1
                evaluation = {}
                if publications % cfg.evaluate_every == 0:
                    evaluation["eval_success_rate"] = evaluate(model, cfg.env_id, cfg.eval_episodes, cfg.eval_seed, self.success_rule)
                    run_session.log_metrics(model.training_steps, **evaluation, eval_teacher_seconds=teacher_seconds)
                await model.store(registry, loss=mean_loss, training_steps=model.training_steps, samples=len(samples), **evaluation)
                run_session.log_metrics(model.training_steps, model_iteration=model.iteration)

        success_rate = evaluate(model, cfg.env_id, cfg.eval_episodes, cfg.eval_seed, self.success_rule)
        run_session.log_metrics(model.training_steps, eval_success_rate=success_rate, eval_teacher_seconds=teacher_seconds)
        # The run's totals, resumed trials included: the page's end-of-run summary shows them.
        final_figures = {
            "training_steps": model.training_steps,
            "samples": len(samples),
            "trials": first_trial + trials_played,
            "demonstrations": samples.demonstration_count,
            "eval_success_rate": success_rate,
        }
        if losses_since_publication:
            final_figures["loss"] = statistics.fmean(losses_since_publication)
        await model.store(registry, **final_figures, **{RUN_FINISHED: "true"})
        print(f"run {run_session.run_id}: iteration {model.iteration}, success rate alone {success_rate:.0%} over {cfg.eval_episodes} episodes")


TRIAL_CUT_SHORT = "the environment or an actor stopped before the episode's end (see the components' log)"


EXAMPLE_SETTINGS = {"num_trials": 5, "batch_size": 32, "publish_every": 100, "evaluate_every": 5, "learning_rate": 0.001, "approval_weight": 1.0}


@dataclass(frozen=True)
class SuccessRule:
    """When an episode of the agent alone counts as a success (``run.eval_success``).

    It depends on the environment: reaching a goal ends MountainCar or Acrobot (``terminated``),
    CartPole succeeds by lasting until the time limit (``truncated``), and LunarLander ends both
    ways whether it lands or crashes, so there a score decides (``return>=200``).
    """

    kind: str  # "terminated", "truncated" or "return"
    threshold: float = 0.0

    @classmethod
    def parse(cls, text: str) -> SuccessRule:
        if text in ("terminated", "truncated"):
            return cls(text)
        if text.startswith("return>="):
            try:
                return cls("return", float(text.removeprefix("return>=")))
            except ValueError:
                pass
        raise ValueError(f"run.eval_success is {text!r}: use terminated, truncated or return>=NUMBER (e.g. return>=200)")

    def succeeded(self, terminated: bool, truncated: bool, episode_return: float) -> bool:
        if self.kind == "terminated":
            return terminated
        if self.kind == "truncated":
            return truncated and not terminated
        return episode_return >= self.threshold


def evaluate(model: SimpleBCModel, env_id: str, episodes: int, first_seed: int, rule: SuccessRule) -> float:
    """Share of successful episodes of the agent alone, on held-out seeds."""
    policy = model.policy()
    env = gymnasium.make(env_id)
    successes = 0
    try:
        for episode in range(episodes):
            observation, _info = env.reset(seed=first_seed + episode)
            episode_return = 0.0
            while True:
                observation, reward, terminated, truncated, _info = env.step(policy.act_one(observation))
                episode_return += float(reward)
                if terminated or truncated:
                    successes += rule.succeeded(terminated, truncated, episode_return)
                    break
    finally:
        env.close()
    return successes / max(episodes, 1)
