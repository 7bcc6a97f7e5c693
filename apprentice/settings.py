"""Checks of a run's numeric settings, shared by the run implementations: a bad one stops main before anything starts."""

from __future__ import annotations

import math


def check_number(cfg, name: str, minimum: float, example: float, integer: bool = False, inclusive: bool = True) -> None:
    """``run.NAME`` must be a number (an integer if ``integer``) at least ``minimum`` (above it unless ``inclusive``).

    Raises a ValueError naming the setting, the rule and ``example`` as a value to give.
    """
    value = cfg.get(name)
    kind = "an integer" if integer else "a number"
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    is_number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not is_number or (integer and value != int(value)) or value < minimum or (not inclusive and value == minimum):
        raise ValueError(f"run.{name}={value!r}: it must be {kind} {bound}; give one, e.g. run.{name}={example}")
