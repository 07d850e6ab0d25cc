"""Hydra sweeper plugin `tunelab`: Optuna studies for `python src/train.py -m …` (see tunelab.tuning)."""
