"""Hydra sweeper plugin: the project sweep engine (see lord_sweeper.py)."""
