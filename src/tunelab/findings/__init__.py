"""The findings: the seed articles' claims re-run as playbook studies and search sweeps, and
docs/FINDINGS.md written back from their MLflow runs (`tunelab findings`)."""
