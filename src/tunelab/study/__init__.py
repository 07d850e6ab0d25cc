"""Playbook studies: a scientific hyperparameter compared fairly, with nuisance parameters tuned per
value (a tunelab.sweep study per cell) and each cell's winner confirmed under the same seeds."""
