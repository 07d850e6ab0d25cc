"""One training run: the contract (`context`: RunContext in, RunResult out), the funnel (`api.run`),
the loop, checkpoints and the record. Light to import: `tunelab.run.api` brings in torch."""

from tunelab.run.context import RunContext, RunResult, TrialRef

__all__ = ["RunContext", "RunResult", "TrialRef"]
