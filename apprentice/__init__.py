"""Apprentice: human-in-the-loop imitation learning on Cogment."""
