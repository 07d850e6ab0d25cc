"""Tuning: Optuna sweeps and playbook studies over Hydra jobs, each job one `tunelab.run` run."""
