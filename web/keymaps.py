"""Which keyboard key is which action, per gymnasium environment.

The page is generic over discrete-action environments: it shows the legend and buttons of the
trial's key map and sends action numbers, never key names. ``p`` is always pause/resume and the
space bar always approves the agent's action.
An environment without a key map gets the digit keys 1..n for actions 0..n-1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

PAUSE_KEY = "p"
APPROVE_KEY = " "


@dataclass(frozen=True)
class Control:
    key: str  # KeyboardEvent.key, e.g. "ArrowLeft"
    action: int
    label: str


KeyMap = list[Control]

DEFAULT_KEY_MAPS: dict[str, KeyMap] = {
    "MountainCar-v0": [
        Control("ArrowLeft", 0, "Push left"),
        Control("ArrowDown", 1, "Don't accelerate"),
        Control("ArrowRight", 2, "Push right"),
    ],
    "CartPole-v1": [
        Control("ArrowLeft", 0, "Push cart left"),
        Control("ArrowRight", 1, "Push cart right"),
    ],
    "Acrobot-v1": [
        Control("ArrowLeft", 0, "Torque -1"),
        Control("ArrowDown", 1, "No torque"),
        Control("ArrowRight", 2, "Torque +1"),
    ],
    "LunarLander-v3": [
        Control("ArrowDown", 0, "Engines off"),
        Control("ArrowLeft", 1, "Left engine"),
        Control("ArrowUp", 2, "Main engine"),
        Control("ArrowRight", 3, "Right engine"),
    ],
}


def digit_key_map(num_actions: int) -> KeyMap:
    """Keys 1..9 for an environment nobody wrote a key map for."""
    return [Control(str(action + 1), action, f"Action {action}") for action in range(min(num_actions, 9))]


def key_map_for(env_id: str, num_actions: int, key_maps: dict[str, KeyMap]) -> KeyMap:
    """The configured key map, keeping only actions the space has (a stale config cannot send junk)."""
    configured = key_maps.get(env_id)
    if configured is None:
        return digit_key_map(num_actions)
    return [control for control in configured if 0 <= control.action < num_actions]


def parse_key_maps(text: str) -> dict[str, KeyMap]:
    """``{"ENV_ID": {"KEY": [ACTION, "label"], ...}, ...}`` as JSON, inline or in a file (``@path``).

    Raises ValueError with what is wrong: a bad key map must stop the server at start, not later.
    """
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--key-map is not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError('--key-map must be a JSON object: {"ENV_ID": {"KEY": [ACTION, "label"]}}')
    key_maps: dict[str, KeyMap] = {}
    for env_id, controls in raw.items():
        if not isinstance(controls, dict):
            raise ValueError(f"--key-map {env_id}: expected an object of KEY: [ACTION, label]")
        parsed = []
        for key, value in controls.items():
            if isinstance(value, list) and 1 <= len(value) <= 2:
                action, label = value[0], (value[1] if len(value) == 2 else None)
            else:
                action, label = value, None
            if not isinstance(action, int) or isinstance(action, bool) or action < 0:
                raise ValueError(f"--key-map {env_id}.{key}: the action must be an integer >= 0, got {value!r}")
            if key.lower() == PAUSE_KEY:
                raise ValueError(f"--key-map {env_id}: {key!r} is the pause key")
            if key == APPROVE_KEY:
                raise ValueError(f"--key-map {env_id}: {key!r} (space) is the approve key")
            parsed.append(Control(key, action, str(label or f"Action {action}")))
        key_maps[env_id] = parsed
    return key_maps


def merged_key_maps(overrides: dict[str, KeyMap]) -> dict[str, KeyMap]:
    """The defaults, with the configured environments replaced as a whole."""
    return {**DEFAULT_KEY_MAPS, **overrides}


def as_json(key_map: KeyMap) -> list[dict]:
    return [asdict(control) for control in key_map]
