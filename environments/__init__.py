"""Cogment environment implementations; ``python -m environments`` serves them with the actors."""
