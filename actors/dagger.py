"""DAgger: the learner plays, the expert labels what it visited (``+experiment=dagger/<task>``).

Read top to bottom (the model, the player, training and evaluation are behavioral cloning's,
``actors/bc.py``):
1. Round 0: the expert plays ``run.rollouts`` episodes (``override`` mode), the learner is
   trained on them for ``run.epochs`` epochs: this is behavioral cloning.
2. Rounds 1..``run.rounds``: the learner's latest iteration plays ``run.rollouts_per_round``
   episodes with the expert in the teacher's seat in ``label`` mode: the learner's action is
   performed and the expert's is the label, except where DAgger's beta coin says the expert's own
   action is performed (``run.beta``, see ``beta_for_round``). The labelled episodes join the
   data, and training goes on for ``run.epochs`` epochs over all of it (warm start; the
   observations keep round 0's normalization). Each round ends with an evaluation of the learner
   alone on the same held-out seeds, so the return per round is comparable.

With ``run.help.mode=ask`` (robot-gated DAgger, as ThriftyDAgger) the learner is an ensemble
(``run.ensemble_size``) and asks for help where its members disagree, within ``run.help.budget``;
the expert's action labels only those steps (``apprentice.teaching``), the others keep the
learner's own action, are not demonstrations and are not trained on.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from actors.bc import (
    ImitationModel,
    Task,
    check_settings,
    episode_returns,
    evaluate,
    log_epochs,
    run_parameters,
    split_validation,
    train_epochs,
    transitions,
)
from apprentice.help import HelpSettings, uncertainty_quantiles
from apprentice.model import RUN_FINISHED
from apprentice.rollouts import RolloutPlan, RolloutResult, collect_episodes
from apprentice.run import RunSession
from apprentice.teaching import BetaPer, TeacherMode

BETA_SCHEDULES = ("constant", "linear", "exponential")


def beta_for_round(schedule: str, round_index: int, value: float, rounds: int, decay: float) -> float:
    """The probability that the expert's action is performed in round ``round_index`` >= 1 (round 0 is all the expert's).

    - ``constant``: ``value`` every round (0, the default, is plain DAgger: the learner always plays);
    - ``linear``: from 1 down to 0 over ``rounds`` rounds, ``max(0, 1 - round / rounds)``;
    - ``exponential``: ``decay ** round``.
    """
    if schedule == "constant":
        return value
    if schedule == "linear":
        return max(0.0, 1.0 - round_index / rounds)
    if schedule == "exponential":
        return decay**round_index
    raise ValueError(f"run.beta.schedule={schedule!r}: use one of {', '.join(BETA_SCHEDULES)}")


def help_figures(rollouts: RolloutResult) -> dict[str, float]:
    """A round's help: how often the learner asked and the expert answered, how often the expert's action
    was performed (beta) or was the label, and the quantiles of the learner's uncertainty."""
    episodes = rollouts.episodes
    asked = np.concatenate([episode.asked for episode in episodes])
    answered = np.concatenate([episode.answered for episode in episodes])
    uncertainty = np.concatenate([episode.uncertainty for episode in episodes])
    figures = {
        "asked_rate": float(asked.mean()),
        "answered_rate": float(answered.sum() / max(asked.sum(), 1)),
        "takeover_rate": rollouts.teacher_performed_steps / max(rollouts.steps, 1),
        "labelled_rate": float(np.concatenate([episode.demonstrations for episode in episodes]).mean()),
    }
    return {**figures, **uncertainty_quantiles(uncertainty)}


class DAggerTraining:
    """DAgger; its settings are the ``run`` section of ``config/experiment/dagger/<task>.yaml``."""

    def __init__(self, cfg) -> None:
        """Checks every setting and the expert file: a bad one stops ``main`` before anything starts (ValueError)."""
        self.cfg = cfg
        check_settings(cfg, ("rollouts", "rounds", "rollouts_per_round", "epochs", "batch_size", "envs_per_trial", "parallel_trials",
                             "eval_episodes", "ensemble_size"), ("learning_rate",))
        self.help = HelpSettings.from_config(cfg.help, cfg.ensemble_size)
        beta = cfg.beta
        if beta.schedule not in BETA_SCHEDULES:
            raise ValueError(f"run.beta.schedule={beta.schedule!r}: use one of {', '.join(BETA_SCHEDULES)}")
        for name in ("value", "decay"):
            if not isinstance(beta[name], int | float) or not 0.0 <= beta[name] <= 1.0:
                raise ValueError(f"run.beta.{name}={beta[name]!r}: it must be a probability in [0, 1], e.g. run.beta.{name}=0.5")
        if beta.schedule == "linear" and (not isinstance(beta.rounds, int) or beta.rounds < 1):
            raise ValueError(f"run.beta.rounds={beta.rounds!r}: the linear schedule needs a positive number of rounds, e.g. run.beta.rounds=5")
        if beta.per not in tuple(BetaPer):
            raise ValueError(f"run.beta.per={beta.per!r}: use step (a coin per step) or episode (one per episode)")
        self.task = Task.from_config(cfg)

    async def impl(self, run_session: RunSession) -> None:
        cfg, task = self.cfg, self.task
        registry = run_session.model_registry
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        model = ImitationModel(run_session.run_id, task.specs, list(cfg.hidden_sizes), ensemble_size=cfg.ensemble_size)
        await model.store(registry)
        run_session.log_params({**run_parameters(cfg, task), "beta": dict(cfg.beta), "help": dict(cfg.help)})
        started = time.perf_counter()

        # 1. Round 0: the expert's roll-outs, behavioral cloning.
        plan = RolloutPlan(cfg.rollouts, cfg.envs_per_trial, cfg.parallel_trials, cfg.seed)
        rollouts = await collect_episodes(run_session, "expert", task.env_id, task.make_kwargs, task.specs, plan,
                                          task.teacher_seat(TeacherMode.OVERRIDE), cfg.player.implementation, model.iteration)
        episodes = list(rollouts.episodes)
        if not episodes:
            raise RuntimeError("the expert played no whole episode: nothing to learn from (see the components' log)")
        observations, labels = transitions(episodes)
        model.fit_normalization(observations)  # kept for every round: the warm-started network sees the same inputs
        optimizer = model.network.adam(cfg.learning_rate)
        epoch = 0

        # 2. Rounds: train on everything so far, evaluate, let the learner play and the expert label.
        for round_index in tqdm(range(cfg.rounds + 1), desc="rounds", unit="round"):
            # The expert's labels only: a gated learner's steps it did not ask about keep its own action.
            observations, labels = transitions(episodes, demonstrations_only=True)
            _train, validation = split_validation(len(observations), cfg.validation_fraction, generator)
            history = train_epochs(model, optimizer, observations, labels, validation, cfg.epochs, cfg.batch_size, generator,
                                   first_epoch=epoch, description=f"round {round_index} epochs", average_epochs=cfg.average_epochs)
            epoch += cfg.epochs
            log_epochs(run_session, history)
            await model.store(registry, round=round_index, validation_loss=history[-1].validation)
            returns = evaluate(model.policy(), task, cfg.eval_episodes, cfg.eval_seed)
            expert_labels = sum(int(episode.demonstrations.sum()) for episode in episodes)
            run_session.log_metrics(round_index, round_return_mean=float(returns.mean()), round_return_std=float(returns.std()),
                                    expert_labels=expert_labels, round_validation_loss=history[-1].validation)
            tqdm.write(f"round {round_index:3d}  return alone {returns.mean():8.1f} ± {returns.std():6.1f}  expert labels {expert_labels:7d}  "
                       f"validation loss {history[-1].validation:.4f}")
            if round_index == cfg.rounds:
                break

            beta = beta_for_round(cfg.beta.schedule, round_index + 1, cfg.beta.value, cfg.beta.rounds, cfg.beta.decay)
            # Each round's episodes get seeds of their own, apart from round 0's and the evaluation's.
            plan = RolloutPlan(cfg.rollouts_per_round, cfg.envs_per_trial, cfg.parallel_trials, cfg.seed + 10_000 * (round_index + 1))
            rollouts = await collect_episodes(run_session, f"round-{round_index + 1}", task.env_id, task.make_kwargs, task.specs, plan,
                                              task.teacher_seat(TeacherMode.LABEL, beta=beta, beta_per=BetaPer(cfg.beta.per)),
                                              cfg.player.implementation, model.iteration, self.help)
            episodes += rollouts.episodes
            run_session.log_metrics(round_index + 1, beta=beta, learner_rollout_return=float(np.mean(episode_returns(rollouts.episodes))),
                                    expert_performed_steps=rollouts.teacher_performed_steps, **help_figures(rollouts))

        figures = {"eval_return_mean": float(returns.mean()), "eval_return_std": float(returns.std()), "wall_seconds": time.perf_counter() - started}
        run_session.log_metrics(epoch, **figures)  # expert_labels is logged per round (step = round) above
        await model.store(registry, **figures, expert_labels=expert_labels, rounds=cfg.rounds, **{RUN_FINISHED: "true"})
        print(f"run {run_session.run_id}: DAgger return alone {returns.mean():.1f} ± {returns.std():.1f} over {cfg.eval_episodes} episodes, "
              f"{expert_labels} expert-labelled steps", flush=True)
