"""Benchmark: how fast behavioral cloning trains, against a bare torch loop and imitation's BC.

    .venv/bin/python bench/bc_training_speed.py [--transitions 20000] [--repeats 5] [--epochs 10]
        [--imitation-python /tmp/imitation-venv/bin/python] [--imitation-epochs 2]

The data: ``--transitions`` Hopper-v4 transitions of the expert (``../shared/experts/Hopper.pkl``)
in a bare gymnasium loop, 10% of them held out as the runs do (``actors.bc.split_validation``).
Measured in one run, interleaved (the order alternates from one repeat to the next), ``--repeats``
times, because this VM's speed drifts by 20-40% within minutes:

1. **Apprentice's BC**: ``actors.bc.train_epochs`` on an ``actors.bc.ImitationModel`` (2x64 ReLU,
   observations normalized by the data's mean and std), Adam lr 1e-3, batch 32, ``--epochs``
   epochs, with the validation loss after each epoch as in the runs (its cost is included).
2. **Bare torch loop**: the same network and optimizer (Adam, fused) over pre-made tensors (inputs normalized
   beforehand): per epoch a randperm, then per batch a slice, forward, MSE, backward, Adam step.
3. **imitation's BC** (``imitation`` 1.0.1, ``bc.BC(...).train(n_epochs=...)``, an SB3
   ``ActorCriticPolicy`` with a 2x64 ReLU policy network, batch 32, lr 1e-3) on the same training
   transitions, in a worker subprocess started with ``--imitation-python`` (a separate venv: imitation
   pins gymnasium 0.29, the project uses 1.4; it is not one of the project's dependencies). The
   worker is started once and told when to train, so its repeats interleave with the others.
   Without that interpreter, that line says why and the docs' reference figure stands.

Samples/s counts training transitions processed (epochs x training transitions / seconds), one
torch thread everywhere (``actors.bc`` sets it; the worker too). Targets (issue 10): BC >= 0.7x the
bare loop, and >= 3x imitation's BC. This prints numbers and checks nothing.

The imitation venv (the CPU build of torch 2.13.0 first, the project's own; never a CUDA build)::

    python3.11 -m venv /tmp/imitation-venv
    /tmp/imitation-venv/bin/pip install --quiet TORCH_2.13.0_CPU_WHEEL
    echo torch==2.13.0 > /tmp/imitation-constraints.txt   # so that imitation's requirements keep that torch
    /tmp/imitation-venv/bin/pip install --quiet -c /tmp/imitation-constraints.txt imitation==1.0.1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERT_PATH = PROJECT_ROOT.parent / "shared" / "experts" / "Hopper.pkl"
ENV_ID = "Hopper-v4"
HIDDEN_SIZES = [64, 64]
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
VALIDATION_FRACTION = 0.1
DEFAULT_IMITATION_PYTHON = "/tmp/imitation-venv/bin/python"
IMITATION_FIGURE = 25_000  # samples/s, issue 10's figure for imitation's BC here on one thread


# --- The data ---------------------------------------------------------------------------------


def expert_transitions(count: int, seed: int = 0):
    """``count`` (observation, expert action) pairs of the Hopper expert, in a bare gymnasium loop (float32)."""
    import gymnasium
    import numpy as np

    from apprentice.experts import load_expert

    expert = load_expert(EXPERT_PATH)
    env = gymnasium.make(ENV_ID)
    observations, actions = [], []
    observation, _ = env.reset(seed=seed)
    episode = 0
    while len(observations) < count:
        action = np.clip(expert.act(observation), env.action_space.low, env.action_space.high)
        observations.append(observation.astype(np.float32))
        actions.append(action.astype(np.float32))
        observation, _reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episode += 1
            observation, _ = env.reset(seed=seed + episode)
    env.close()
    return np.stack(observations), np.stack(actions)


@dataclass(frozen=True)
class Data:
    """The transitions as tensors, with the split the runs would make."""

    observations: object  # torch.Tensor (N, 11)
    actions: object  # torch.Tensor (N, 3)
    train: object  # torch.Tensor of indexes
    validation: object

    @property
    def train_count(self) -> int:
        return len(self.train)


def make_data(count: int) -> Data:
    import torch

    from actors.bc import split_validation

    observations, actions = expert_transitions(count)
    train, validation = split_validation(count, VALIDATION_FRACTION, torch.Generator().manual_seed(0))
    return Data(torch.as_tensor(observations), torch.as_tensor(actions), train, validation)


# --- 1. Apprentice's BC and 2. the bare loop --------------------------------------------------


def time_apprentice(data: Data, epochs: int, seed: int) -> float:
    """Seconds of ``actors.bc.train_epochs`` for ``epochs`` epochs (normalization inside, as in the runs)."""
    import torch

    from actors.bc import ImitationModel, train_epochs
    from apprentice.spaces import environment_specs

    torch.manual_seed(seed)
    model = ImitationModel("bench", environment_specs(ENV_ID), HIDDEN_SIZES)
    model.fit_normalization(data.observations[data.train])
    optimizer = model.network.adam(LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    train_epochs(model, optimizer, data.observations, data.actions, data.validation, epochs, BATCH_SIZE, generator)
    return time.perf_counter() - started


def time_bare_loop(data: Data, epochs: int, seed: int) -> float:
    """Seconds of the bare torch loop over pre-made tensors (normalized before the clock starts)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    inputs, labels = data.observations[data.train], data.actions[data.train]
    inputs = (inputs - inputs.mean(dim=0)) / inputs.std(dim=0).clamp_min(1e-6)
    network = nn.Sequential(nn.Linear(inputs.shape[1], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, labels.shape[1]))
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE, fused=True)  # as the runs (EnsembleMLP.adam)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _epoch in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            loss = nn.functional.mse_loss(network(inputs[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


# --- 3. imitation's BC, in a worker process of its own venv ------------------------------------


def imitation_worker(data_path: str) -> None:
    """The worker (run by the imitation venv's python): one JSON line on stdout per ``train EPOCHS`` line on stdin.

    Only the standard library, numpy, torch, gymnasium 0.29 and imitation are imported here.
    imitation's own console output goes to stderr, so stdout carries only the replies.
    """
    replies = sys.stdout
    sys.stdout = sys.stderr
    try:
        import gymnasium
        import numpy as np
        import torch
        from imitation.algorithms import bc
        from imitation.data.types import Transitions
        from imitation.util import logger as imitation_logger
        from stable_baselines3.common.policies import ActorCriticPolicy
    except Exception as error:  # noqa: BLE001 - any import failure is the answer
        print(json.dumps({"error": f"imitation cannot be imported: {type(error).__name__}: {error}"}), file=replies, flush=True)
        return
    torch.set_num_threads(1)
    arrays = np.load(data_path)
    observations, actions = arrays["observations"], arrays["actions"]
    transitions = Transitions(
        obs=observations, acts=actions, infos=np.array([{}] * len(observations)),
        next_obs=np.zeros_like(observations), dones=np.zeros(len(observations), dtype=bool),
    )  # fmt: skip
    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, observations.shape[1:], np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, actions.shape[1:], np.float32)
    versions = {"imitation": _version("imitation"), "stable_baselines3": _version("stable_baselines3"), "torch": torch.__version__,
                "gymnasium": gymnasium.__version__}
    print(json.dumps({"ready": True, "versions": versions}), file=replies, flush=True)
    for seed, line in enumerate(sys.stdin, start=1):
        epochs = int(line.split()[1])
        torch.manual_seed(seed)
        policy = ActorCriticPolicy(observation_space, action_space, lambda _progress: LEARNING_RATE,
                                   net_arch=dict(pi=HIDDEN_SIZES, vf=HIDDEN_SIZES), activation_fn=torch.nn.ReLU)
        trainer = bc.BC(observation_space=observation_space, action_space=action_space, rng=np.random.default_rng(seed),
                        policy=policy, demonstrations=transitions, batch_size=BATCH_SIZE, device="cpu",
                        optimizer_kwargs={"lr": LEARNING_RATE},
                        custom_logger=imitation_logger.configure(tempfile.mkdtemp(prefix="imitation-log-"), format_strs=[]))
        started = time.perf_counter()
        trainer.train(n_epochs=epochs, progress_bar=False)
        print(json.dumps({"seconds": time.perf_counter() - started, "samples": epochs * len(observations)}), file=replies, flush=True)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


class ImitationProcess:
    """The worker subprocess, or why there is none (``problem``)."""

    def __init__(self, python: str, data: Data, work_dir: Path) -> None:
        self.process: subprocess.Popen | None = None
        self.problem = ""
        self.versions: dict = {}
        if not Path(python).exists():
            self.problem = f"no interpreter at {python} (see this file's docstring for the venv)"
            return
        import numpy as np

        data_path = work_dir / "transitions.npz"
        np.savez(data_path, observations=data.observations[data.train].numpy(), actions=data.actions[data.train].numpy())
        self.process = subprocess.Popen(
            [python, __file__, "--imitation-worker", str(data_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(work_dir / "imitation-worker.log", "w"), text=True, cwd=work_dir,  # noqa: SIM115 - closed with the process
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""},
        )  # fmt: skip
        reply = self._reply()
        if "error" in reply:
            self.problem = reply["error"]
            self.close()
        else:
            self.versions = reply["versions"]

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            return {"error": f"the worker exited with code {self.process.wait()} (see imitation-worker.log)"}
        return json.loads(line)

    def time_training(self, epochs: int) -> tuple[float, int] | None:
        """(seconds, samples) of one ``BC.train(n_epochs=epochs)``, or None when the worker failed."""
        if self.process is None:
            return None
        self.process.stdin.write(f"train {epochs}\n")
        self.process.stdin.flush()
        reply = self._reply()
        if "error" in reply:
            self.problem = reply["error"]
            self.close()
            return None
        return reply["seconds"], reply["samples"]

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


# --- The measurement ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transitions", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per measurement of Apprentice's BC and the bare loop")
    parser.add_argument("--imitation-epochs", type=int, default=2, help="epochs per measurement of imitation's BC (it is slower)")
    parser.add_argument("--imitation-python", default=DEFAULT_IMITATION_PYTHON)
    parser.add_argument("--imitation-worker", metavar="DATA", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.imitation_worker:
        imitation_worker(args.imitation_worker)
        return

    sys.path.insert(0, str(PROJECT_ROOT))
    import torch

    import actors.bc  # noqa: F401 - sets torch to one thread and flushes denormals (use_small_network_settings), as in the runs

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.transitions} {ENV_ID} expert transitions, "
          f"batch {BATCH_SIZE}, {HIDDEN_SIZES} ReLU, Adam lr {LEARNING_RATE}", flush=True)
    data = make_data(args.transitions)
    print(f"{data.train_count} training transitions, {len(data.validation)} held out", flush=True)
    work_dir = Path(tempfile.mkdtemp(prefix="bc-speed-"))
    imitation = ImitationProcess(args.imitation_python, data, work_dir)
    if imitation.problem:
        print(f"imitation's BC: not measured here: {imitation.problem}", flush=True)
    else:
        print(f"imitation's BC worker: {imitation.versions}", flush=True)

    samples = args.epochs * data.train_count
    time_apprentice(data, 1, seed=0)  # warm-up: first-call costs of torch and the imports
    time_bare_loop(data, 1, seed=0)
    rows = []
    try:
        for repeat in range(args.repeats):
            seconds: dict[str, float] = {}
            order = ("apprentice", "bare", "imitation") if repeat % 2 == 0 else ("imitation", "bare", "apprentice")
            for name in order:
                if name == "apprentice":
                    seconds[name] = samples / time_apprentice(data, args.epochs, seed=repeat + 1)
                elif name == "bare":
                    seconds[name] = samples / time_bare_loop(data, args.epochs, seed=repeat + 1)
                elif (measured := imitation.time_training(args.imitation_epochs)) is not None:
                    seconds[name] = measured[1] / measured[0]
            rows.append(seconds)
            line = f"repeat {repeat + 1}: BC {seconds['apprentice']:,.0f} samples/s, bare loop {seconds['bare']:,.0f}, " \
                   f"BC / bare {seconds['apprentice'] / seconds['bare']:.2f}"
            if "imitation" in seconds:
                line += f", imitation's BC {seconds['imitation']:,.0f}, BC / imitation {seconds['apprentice'] / seconds['imitation']:.2f}"
            print(line, flush=True)
    finally:
        imitation.close()
    summarize(rows, imitation.problem)


def summarize(rows: list[dict[str, float]], imitation_problem: str) -> None:
    """Medians over the repeats; the ratios are medians of the per-repeat ratios (parts measured side by side)."""
    def median(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    bare_ratio = statistics.median(row["apprentice"] / row["bare"] for row in rows)
    print(f"\nmedian over {len(rows)} repeats: BC {median('apprentice'):,.0f} samples/s, bare loop {median('bare'):,.0f} samples/s")
    print(f"BC / bare loop: {bare_ratio:.2f} (target >= 0.7: {'met' if bare_ratio >= 0.7 else 'NOT met'})")
    if all("imitation" in row for row in rows):
        imitation_ratio = statistics.median(row["apprentice"] / row["imitation"] for row in rows)
        print(f"imitation's BC {median('imitation'):,.0f} samples/s (measured here); BC / imitation: {imitation_ratio:.2f} "
              f"(target >= 3: {'met' if imitation_ratio >= 3 else 'NOT met'})")
    else:
        ratio = median("apprentice") / IMITATION_FIGURE
        print(f"imitation's BC not measured here ({imitation_problem or 'the worker failed'}); against the issue's figure of "
              f"{IMITATION_FIGURE:,} samples/s (NOT measured in this run): {ratio:.2f}")


if __name__ == "__main__":
    main()
