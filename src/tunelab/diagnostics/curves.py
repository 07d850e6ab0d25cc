"""Diagnosis of a finished run from its per-epoch history: what went wrong and what to try next.

Epochs are numbered from 1, as in the training log and the MLflow steps (history index + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from tunelab.config.groups import OPTIMIZERS

RECOMMENDATIONS = {
    "diverged": "lower the lr or add warm-up; large lr with small momentum is unstable: "
    "raise momentum (0.9) or lower lr; clip gradients",
    "overfitting": "add regularisation: weight decay 1e-4..1e-2, dropout 0.2-0.5, data augmentation, "
    "or more data; select the best epoch (early stopping)",
    "underfitting": "more capacity (width/depth), less regularisation (too much L2 learns nothing), "
    "tune the lr first, train longer",
    "unstable_val": "large lr with small momentum is unstable: raise momentum or lower lr; "
    "decay the lr (cosine or ReduceLROnPlateau)",
    "plateaued": "decay the lr: ReduceLROnPlateau with a min_lr floor, or cosine annealing",
    "still_improving": "validation is still improving: train longer (more epochs)",
}
SEVERITY = list(RECOMMENDATIONS)  # most severe first
# Adaptive optimizers (Adam and its kin) have no momentum knob to raise: their advice differs.
# A run names its optimizer by its conf/optimizer option, the class's name in lower case (adam:
# torch.optim.Adam); config/groups.py's OPTIMIZERS says which classes adapt.
ADAPTIVE = tuple(t.rsplit(".", 1)[-1].lower() for t, f in OPTIMIZERS.items() if f.adaptive)
ADAPTIVE_RECOMMENDATIONS = {
    "diverged": "lower the lr or add warm-up (adaptive optimizers spike early); clip gradients",
    "unstable_val": "lower the lr or decay it (cosine or ReduceLROnPlateau); a larger batch "
    "also steadies the updates",
}


def recommendation(code: str, optimizer: str | None = None) -> str:
    """What to try next for a finding, in terms of the optimizer the run used."""
    if optimizer in ADAPTIVE and code in ADAPTIVE_RECOMMENDATIONS:
        return ADAPTIVE_RECOMMENDATIONS[code]
    return RECOMMENDATIONS[code]


@dataclass(frozen=True)
class Finding:
    code: str
    since_epoch: int | None
    message: str
    recommendation: str


def diagnose_curves(
    history: dict[str, list[float]],
    *,
    optimizer: str | None = None,
    window: int | None = None,
    explode_factor: float = 3.0,
    overfit_rise: float = 0.05,
    underfit_acc: float = 0.9,
    underfit_gap: float = 0.05,
    unstable_tol: float = 0.08,
    patience: int = 10,
    min_improvement: float = 0.01,
    lr_floor_ratio: float = 0.3,
    improving_tol: float = 0.02,
) -> list[Finding]:
    """Findings about a run, most severe first; an empty list means a healthy run.

    Uses train/loss, val/loss, train/acc, val/acc and opt/lr where present (loss preferred)."""
    train_loss = _series(history, "train/loss")
    val_loss = _series(history, "val/loss")
    n = max(len(train_loss), len(val_loss))
    if n < 3:
        return []
    w = window or max(3, min(10, n // 6))
    diverged = _diverged(train_loss, val_loss, explode_factor)
    if diverged:
        return [replace(diverged, recommendation=recommendation("diverged", optimizer))]
    train_acc, val_acc = _series(history, "train/acc"), _series(history, "val/acc")
    lr = _series(history, "opt/lr")
    checks = [
        _overfitting(train_loss, val_loss, w, overfit_rise),
        _underfitting(train_loss, train_acc, val_acc, w, underfit_acc, underfit_gap),
        _unstable(val_loss, val_acc, unstable_tol),
        _plateaued(val_loss, val_acc, lr, patience, min_improvement, lr_floor_ratio),
        _still_improving(val_loss, val_acc, max(4, min(10, n // 4)), improving_tol),
    ]
    found = sorted((f for f in checks if f), key=lambda f: SEVERITY.index(f.code))
    return [replace(f, recommendation=recommendation(f.code, optimizer)) for f in found]


def findings_to_tags(findings: list[Finding]) -> dict[str, str]:
    """Flat MLflow tags: diagnosis=<codes>, diagnosis.<code>.since_epoch, one recommendation."""
    if not findings:
        return {"diagnosis": "healthy"}
    tags = {"diagnosis": ",".join(f.code for f in findings)}
    for f in findings:
        tags[f"diagnosis.{f.code}"] = f.message
        if f.since_epoch is not None:
            tags[f"diagnosis.{f.code}.since_epoch"] = str(f.since_epoch)
    tags["diagnosis.recommendation"] = findings[0].recommendation
    return tags


def _finding(code: str, since: int | None, message: str) -> Finding:
    """`since`: a history index (the epoch number is one more)."""
    return Finding(code, None if since is None else since + 1, message, RECOMMENDATIONS[code])


def _series(history: dict[str, list[float]], key: str) -> np.ndarray:
    return np.asarray(history.get(key) or [], dtype=float)


def _smooth(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing moving average (shorter window at the start), so noise cannot fake a trend."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - w, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _noise(s: np.ndarray) -> float:
    """Std of epoch-to-epoch noise: residuals around a centred 5-epoch mean, rescaled for the mean's
    own share of the noise."""
    if len(s) < 7:
        return 0.0
    resid = s[2:-2] - np.convolve(s, np.ones(5) / 5, mode="valid")
    return float(np.std(resid)) / math.sqrt(0.8)


def _slope(y: np.ndarray) -> float:
    """Least-squares slope per epoch."""
    t = np.arange(len(y), dtype=float)
    return float(np.polyfit(t, y, 1)[0]) if len(y) >= 2 else 0.0


def _diverged(train_loss: np.ndarray, val_loss: np.ndarray, factor: float) -> Finding | None:
    for name, s in (("train/loss", train_loss), ("val/loss", val_loss)):
        bad = np.flatnonzero(~np.isfinite(s))
        if bad.size:
            return _finding(
                "diverged", int(bad[0]), f"{name} became non-finite at epoch {bad[0] + 1}"
            )
    if len(train_loss) >= 2:
        running_min = np.minimum.accumulate(train_loss)
        exploding = (train_loss > factor * running_min) & (train_loss > train_loss[0])
        hits = np.flatnonzero(exploding)
        if hits.size:
            k = int(hits[0])
            return _finding(
                "diverged",
                k,
                f"train/loss exploded to {train_loss[k]:.3g} at epoch {k + 1} "
                f"(best so far {running_min[k]:.3g})",
            )
    return None


def _overfitting(
    train_loss: np.ndarray, val_loss: np.ndarray, w: int, rise: float
) -> Finding | None:
    """Smoothed val loss rises clearly above its minimum while smoothed train loss keeps falling."""
    n = min(len(train_loss), len(val_loss))
    if n < 2 * w:
        return None
    tr, va = _smooth(train_loss[:n], w), _smooth(val_loss[:n], w)
    k = int(np.argmin(va))
    if n - k < w:
        return None
    noise = _noise(val_loss[k:n])
    gain = va[-1] - va[k]
    if gain <= max(rise * va[k], 3 * noise) or _slope(va[k:]) <= 0 or tr[-1] >= tr[k]:
        return None
    since = k - (w - 1) // 2  # the trailing window lags the raw curve by about half its width
    since = max(since, 0)
    return _finding(
        "overfitting",
        since,
        f"val/loss rose from {va[k]:.3g} to {va[-1]:.3g} since epoch {since + 1} "
        f"while train/loss fell to {tr[-1]:.3g}",
    )


def _underfitting(
    train_loss: np.ndarray,
    train_acc: np.ndarray,
    val_acc: np.ndarray,
    w: int,
    acc: float,
    gap: float,
) -> Finding | None:
    """High bias: training accuracy far from 1 and close to validation (or the loss barely fell)."""
    if len(train_acc) and len(val_acc):
        tr, va = float(np.mean(train_acc[-w:])), float(np.mean(val_acc[-w:]))
        if tr < acc and tr - va < gap:
            return _finding(
                "underfitting",
                None,
                f"over the last {min(w, len(train_acc))} epochs train/acc averages {tr:.3f}, far "
                f"below 1 and close to val/acc's {va:.3f}",
            )
        return None
    if len(train_loss) >= 2 * w and np.mean(train_loss[-w:]) > 0.5 * train_loss[0]:
        return _finding(
            "underfitting",
            None,
            f"train/loss only fell from {train_loss[0]:.3g} to {np.mean(train_loss[-w:]):.3g}",
        )
    return None


def _unstable(val_loss: np.ndarray, val_acc: np.ndarray, tol: float) -> Finding | None:
    """Mean distance of the val metric from its centred 5-epoch trend (log scale for the loss)."""
    use_loss = len(val_loss) >= 7 and bool(np.all(val_loss > 0))
    s = np.log(val_loss) if use_loss else val_acc
    if len(s) < 7:
        return None
    trend = np.convolve(s, np.ones(5) / 5, mode="valid")  # centred: s[2:-2] vs trend
    resid = np.abs(s[2:-2] - trend)
    score = float(np.mean(resid))
    if score <= tol:
        return None
    since = int(np.flatnonzero(resid > tol)[0]) + 2
    what = "log val/loss" if use_loss else "val/acc"
    return _finding(
        "unstable_val",
        since,
        f"{what} deviates from its trend by {score:.3f} per epoch on average (tolerance {tol})",
    )


def _plateaued(
    val_loss: np.ndarray,
    val_acc: np.ndarray,
    lr: np.ndarray,
    patience: int,
    min_improvement: float,
    lr_floor_ratio: float,
) -> Finding | None:
    """No relative improvement of the val metric over the last `patience` epochs while the lr is
    still within lr_floor_ratio of its peak (so lowering it would matter)."""
    s, name = (val_loss, "val/loss") if len(val_loss) else (-val_acc, "val/acc")
    n = len(s)
    p = min(patience, n // 3)
    if p < 3:
        return None
    best_before, best_recent = float(np.min(s[:-p])), float(np.min(s[-p:]))
    scale = abs(best_before) if name == "val/loss" else 1.0
    if best_before - best_recent > min_improvement * scale:
        return None
    if len(lr) and lr[-1] < lr_floor_ratio * np.max(lr):
        return None
    since = int(np.argmin(s[:-p]))
    lr_note = f" at lr {lr[-1]:.3g}" if len(lr) else ""
    return _finding(
        "plateaued",
        since,
        f"{name} has not improved by {min_improvement:.0%} in the last {p} epochs{lr_note}",
    )


def _still_improving(
    val_loss: np.ndarray, val_acc: np.ndarray, w: int, tol: float
) -> Finding | None:
    """The val metric's robust (Theil-Sen) trend over the final w epochs improves by more than tol
    (relative for the loss, absolute for accuracy) and by more than 3x the noise around it."""
    s, name = (val_loss, "val/loss") if len(val_loss) else (-val_acc, "val/acc")
    if len(s) < 2 * w:
        return None
    tail = s[-w:]
    i, j = np.triu_indices(w, k=1)
    slope = float(np.median((tail[j] - tail[i]) / (j - i)))
    noise = _noise(s[len(s) // 2 :])
    gain = -slope * (w - 1)
    scale = abs(float(np.mean(tail))) if name == "val/loss" else 1.0
    if gain <= max(tol * scale, 3 * noise):
        return None
    return _finding(
        "still_improving",
        len(s) - w,
        f"{name} improved by {gain:.3g} over the last {w} epochs",
    )
