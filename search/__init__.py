"""Optuna search over ArchSpec space under the assignment's constraints (``python -m search``)."""
