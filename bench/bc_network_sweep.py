"""Which learner network clones an expert best from little data: BC's return for a few MLP shapes.

    .venv/bin/python bench/bc_network_sweep.py --task Walker2d-v4 --rollouts 1 --seeds 3

For each seed, the expert (``../shared/experts``) plays ``--rollouts`` episodes in a bare gymnasium
loop (reset seeds ``1000 * seed + k``); then each network shape is trained on the same transitions
exactly as a BC run trains (``actors.bc``: ``ImitationModel``, ``train_epochs``, 100 epochs, batch
32, Adam 1e-3, 10% held out) and evaluated alone on the runs' held-out seeds (``evaluate``, 10
episodes from 100000). Prints each shape's return per seed and the mean and std over the seeds.
This is what chose the numbers quoted in ``config/imitation/bc.yaml``; it does not go through
Cogment (the roll-outs' path is measured by bench/rollout_throughput.py).
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

from actors.bc import ImitationModel, Task, evaluate, split_validation, train_epochs
from apprentice.experts import load_expert
from apprentice.launcher import PROJECT_ROOT
from apprentice.spaces import environment_specs

EXPERT_FILES = {"Hopper-v4": "Hopper", "HalfCheetah-v4": "HalfCheetah", "Walker2d-v4": "Walker2d", "Ant-v4": "Ant", "Reacher-v4": "Reacher"}
SHAPES = {"64x64": [64, 64], "128x128": [128, 128], "256x256": [256, 256]}


def expert_transitions(task: Task, expert, rollouts: int, first_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    env = task.make_env()
    observations, actions = [], []
    for episode in range(rollouts):
        observation, _info = env.reset(seed=first_seed + episode)
        done = False
        while not done:
            action = expert.act(observation[None])[0]
            observations.append(observation)
            actions.append(action)
            observation, _reward, terminated, truncated, _info = env.step(action)
            done = terminated or truncated
    env.close()
    return torch.as_tensor(np.array(observations), dtype=torch.float32), torch.as_tensor(np.array(actions), dtype=torch.float32)


def bc_return(task: Task, hidden_sizes: list[int], observations: torch.Tensor, labels: torch.Tensor, seed: int) -> float:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ImitationModel("sweep", task.specs, hidden_sizes)
    model.fit_normalization(observations)
    optimizer = model.network.adam(1e-3)
    _train, validation = split_validation(len(observations), 0.1, generator)
    train_epochs(model, optimizer, observations, labels, validation, 100, 32, generator)
    return float(evaluate(model.policy(), task, 10, 100_000).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="Walker2d-v4", choices=sorted(EXPERT_FILES))
    parser.add_argument("--rollouts", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--experts", default=str(PROJECT_ROOT.parent / "shared" / "experts"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*is out of date")  # the experts were measured on -v4

    make_kwargs = {"use_contact_forces": True} if args.task == "Ant-v4" else {}
    task = Task(args.task, make_kwargs, environment_specs(args.task, make_kwargs), "expert", "")
    expert = load_expert(os.path.join(args.experts, f"{EXPERT_FILES[args.task]}.pkl"))
    returns: dict[str, list[float]] = {name: [] for name in SHAPES}
    for seed in range(args.seeds):
        observations, labels = expert_transitions(task, expert, args.rollouts, first_seed=1000 * seed)
        for name, hidden_sizes in SHAPES.items():
            returns[name].append(bc_return(task, hidden_sizes, observations, labels, seed))
        print(f"seed {seed}: " + ", ".join(f"{name} {values[-1]:.0f}" for name, values in returns.items()), flush=True)
    print(f"{args.task}, {args.rollouts} expert roll-out(s), BC return alone, mean (std) over {args.seeds} seeds:")
    for name, values in returns.items():
        print(f"  {name:8s} {np.mean(values):8.1f} ({np.std(values):.1f})")


if __name__ == "__main__":
    main()
