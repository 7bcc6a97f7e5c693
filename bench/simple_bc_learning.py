"""Benchmark: how fast the agent learns from the scripted teacher, and what MLflow logging costs.

    .venv/bin/python bench/simple_bc_learning.py [--trials 5] [--seeds 0 1 2]

1. Runs, for each seed (fresh data dir, metrics into its MLflow store), the always-watching
   scripted teacher (``python -m main +experiment=simple_bc/mountain_car teacher=scripted``) and
   the one that acts only when the agent asks for help (``+experiment=simple_bc/mountain_car_asks``),
   and reads back, per trial: intervention rate, the teacher's actions (takeovers and explicit
   approvals), how often the agent asked, return, and the mean loss of the training steps logged
   during that trial; plus the final success rate of the agent alone on 50 held-out episodes. The
   curves go to ``docs/simple_bc_learning.png``; the teacher's effort is compared per seed.
2. Times the training loop of ``actors.simple_bc`` (batch 32, Adam, one step per sample) on
   recorded-like samples with ``MetricsLogger`` logging on and off: the ratio should be >= 0.95.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from actors.simple_bc import SimpleBCModel  # noqa: E402
from apprentice.launcher import free_port  # noqa: E402
from apprentice.metrics import MetricsLogger  # noqa: E402
from apprentice.spaces import environment_specs  # noqa: E402

RESULT_LINE = re.compile(r"success rate alone (\d+)% over (\d+) episodes")


# How each teacher is run: the always-watching scripted teacher, and the one that answers only when asked.
TEACHERS = {"watching": ("+experiment=simple_bc/mountain_car", "teacher=scripted"), "asked": ("+experiment=simple_bc/mountain_car_asks",)}
PER_TRIAL = ("intervention_rate", "trial_return", "teacher_actions", "asked_rate")


def run_experiment(teacher: str, seed: int, trials: int, work_dir: Path) -> dict:
    data_dir = work_dir / f"{teacher}-seed-{seed}"
    command = [
        sys.executable, "-m", "main", *TEACHERS[teacher],
        f"run.num_trials={trials}", f"run.seed={seed}", f"data_dir={data_dir}", f"mlflow.port={free_port()}",
        f"services.port={free_port()}", f"services.components_port={free_port()}", f"hydra.run.dir={work_dir / 'outputs'}",
    ]
    started = time.monotonic()
    finished = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    if finished.returncode != 0:
        raise RuntimeError(finished.stdout[-2000:] + finished.stderr[-4000:])
    elapsed = time.monotonic() - started
    success = RESULT_LINE.search(finished.stdout)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "apprentice"]
    (run,) = client.search_runs([experiment.experiment_id])
    history = {key: client.get_metric_history(run.info.run_id, key) for key in (*PER_TRIAL, "loss")}
    # A trial's summary is logged at the training step reached when it ended: the loss of a trial
    # is the mean of the losses logged since the previous trial's summary.
    boundaries = [m.step for m in history["intervention_rate"]]
    losses, previous = [], -1
    for boundary in boundaries:
        values = [m.value for m in history["loss"] if previous < m.step <= boundary]
        losses.append(float(np.mean(values)) if values else float("nan"))
        previous = boundary
    return {
        "teacher": teacher,
        "seed": seed,
        "intervention": [m.value for m in history["intervention_rate"]],
        "teacher_actions": [m.value for m in history["teacher_actions"]],
        "asked": [m.value for m in history["asked_rate"]],
        "return": [m.value for m in history["trial_return"]],
        "loss": losses,
        "success": int(success[1]) / 100 if success else float("nan"),
        "seconds": elapsed,
    }


def time_training_loop(steps: int, with_logging: bool, work_dir: Path) -> float:
    """Training steps per second of the SimpleBC update, logging loss and total_samples each step."""
    torch.manual_seed(0)
    model = SimpleBCModel("bench", environment_specs("MountainCar-v0"), [64, 64])
    optimizer = model.network.adam(1e-3)
    rng = np.random.default_rng(0)
    observations = [model.observation_tensor(rng.uniform([-1.2, -0.07], [0.6, 0.07])) for _ in range(2000)]
    actions = [model.action_tensor(a) for a in rng.integers(0, 3, 2000)]
    logger = None
    if with_logging:
        logger = MetricsLogger(data_dir=work_dir / "timing", server_port=free_port())
        logger.start_run("bench", run_name="training-loop")
    started = time.perf_counter()
    for step in range(steps):
        picks = torch.randint(len(actions), (32,)).tolist()
        batch_observations, batch_actions = torch.stack([observations[i] for i in picks]), torch.stack([actions[i] for i in picks])
        loss = model.loss(batch_observations.unsqueeze(0), batch_actions.unsqueeze(0), torch.ones(1, 32))  # one member
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if logger is not None:
            logger.log_metric("loss", loss.item(), step)
            logger.log_metric("total_samples", len(actions), step)
        else:
            loss.item()
    elapsed = time.perf_counter() - started
    if logger is not None:
        logger.close()
    return steps / elapsed


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for result in results:
        trials = range(1, len(result["intervention"]) + 1)
        label = f"{result['teacher']}, seed {result['seed']} (alone: {result['success']:.0%})"
        style = {"marker": "o" if result["teacher"] == "watching" else "s", "linestyle": "-" if result["teacher"] == "watching" else "--"}
        axes[0].plot(trials, result["teacher_actions"], label=label, **style)
        axes[1].plot(trials, result["return"], label=label, **style)
        axes[2].plot(trials, result["loss"], label=label, **style)
    for axis, title in zip(axes, ("teacher's actions per trial", "return per trial", "mean training loss")):
        axis.set_title(title)
        axis.set_xlabel("trial")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle("MountainCar, behavioral cloning: the scripted teacher always watching (o) or answering only when asked (s)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--training-steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds of the logging on/off timing")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="simple-bc-bench-") as work:
        work_dir = Path(work)
        results = [run_experiment(teacher, seed, args.trials, work_dir) for seed in args.seeds for teacher in TEACHERS]
        print("teacher | seed | intervention rate per trial (%) | asked per trial (%) | teacher actions per trial | return per trial | "
              "mean loss per trial | alone success | seconds")
        for r in results:
            print(
                f"{r['teacher']} | {r['seed']} | {' '.join(f'{100 * v:.0f}' for v in r['intervention'])} | "
                f"{' '.join(f'{100 * v:.0f}' for v in r['asked'])} | {' '.join(f'{v:.0f}' for v in r['teacher_actions'])} | "
                f"{' '.join(f'{v:.0f}' for v in r['return'])} | {' '.join(f'{v:.3f}' for v in r['loss'])} | "
                f"{r['success']:.0%} | {r['seconds']:.0f}"
            )
        totals = {(r["teacher"], r["seed"]): sum(r["teacher_actions"]) for r in results}
        for seed in args.seeds:
            print(f"seed {seed}: teacher actions, asked {totals['asked', seed]:.0f} against watching {totals['watching', seed]:.0f}: "
                  f"ratio {totals['asked', seed] / max(totals['watching', seed], 1):.2f} (goal <= 0.5)")
        ratios = [totals["asked", seed] / max(totals["watching", seed], 1) for seed in args.seeds]
        asked_success = [r["success"] for r in results if r["teacher"] == "asked"]
        print(f"asked: mean ratio {np.mean(ratios):.2f}, mean success alone {np.mean(asked_success):.0%} (goal >= 90%)")
        plot(results, PROJECT_ROOT / "docs" / "simple_bc_learning.png")
        print("curves written to docs/simple_bc_learning.png")

        # Alternate rounds with and without logging; the medians resist this machine's noise.
        rounds = [(time_training_loop(args.training_steps, False, work_dir), time_training_loop(args.training_steps, True, work_dir))
                  for _ in range(args.rounds)]
        off = float(np.median([r[0] for r in rounds]))
        on = float(np.median([r[1] for r in rounds]))
        print(f"training loop, median of {args.rounds} rounds: {off:,.0f} steps/s without logging, {on:,.0f} with MLflow "
              f"logging: ratio {on / off:.3f} (goal >= 0.95); rounds: {', '.join(f'{b / a:.2f}' for a, b in rounds)}")


if __name__ == "__main__":
    main()
