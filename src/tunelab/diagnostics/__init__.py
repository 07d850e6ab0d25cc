"""Diagnostics the seed articles ask for: curve diagnosis, gradient check, data check, lr range test,
overfitting a tiny subset. Plain functions over torch modules and tensors; command.py runs them."""

from tunelab.diagnostics.curves import Finding, diagnose_curves, findings_to_tags
from tunelab.diagnostics.datacheck import DataReport, check_data, datacheck_tags
from tunelab.diagnostics.gradcheck import GradCheckReport, gradient_check
from tunelab.diagnostics.lr_range import LRRangeResult, lr_range_test, plot_lr_range
from tunelab.diagnostics.metrics import per_class_accuracy, per_class_metrics
from tunelab.diagnostics.overfit import OverfitResult, overfit_tiny_subset

__all__ = [
    "DataReport",
    "Finding",
    "GradCheckReport",
    "LRRangeResult",
    "OverfitResult",
    "check_data",
    "datacheck_tags",
    "diagnose_curves",
    "findings_to_tags",
    "gradient_check",
    "lr_range_test",
    "overfit_tiny_subset",
    "per_class_accuracy",
    "per_class_metrics",
    "plot_lr_range",
]
