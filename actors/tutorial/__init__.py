"""The behavioral cloning tutorial, in four steps that lead to ``actors/simple_bc.py``.

Each ``tutorial_N.py`` stands on its own: a ``SimpleBCActor`` (the ``player``) and a
``SimpleBCTraining`` (the run), with ``# --- changed in step N:`` comments where it differs from
step N-1. ``docs/tutorial.md`` walks through them.
"""
