"""How far can logistic regression go on the project's MNIST-1D split? The exact optimum of the
convex problem (scikit-learn's L-BFGS) for several L2 strengths C, on the training split the
project trains on (validation carved out) and on all training examples, next to the accuracy of the
`model=logreg` recipe. Prints val and test accuracy per C; the C a user would pick is the one with
the best validation accuracy.

    python bench/logreg_ceiling.py [data=digits ...]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

CS = (0.001, 0.01, 0.1, 1.0, 10.0)


def flat(x) -> np.ndarray:
    return x.reshape(len(x), -1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the data, e.g. data=digits")
    args = ap.parse_args()
    from hydra import compose, initialize_config_dir
    from sklearn.linear_model import LogisticRegression

    from tunelab import build

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["model=logreg", *args.overrides])
    s = build.build_data(cfg.data)
    x, y = flat(s.x_train), s.y_train.numpy()
    xv, yv = flat(s.x_val), s.y_val.numpy()
    xt, yt = flat(s.x_test), s.y_test.numpy()
    print(f"train {len(y)}, val {len(yv)}, test {len(yt)} examples ({cfg.data.name})")
    print(f"{'C':>8} {'val/acc':>8} {'test/acc':>9} {'test/acc, trained on train+val':>31}")
    rows = []
    for c in CS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = LogisticRegression(C=c, max_iter=5000).fit(x, y)
            full = LogisticRegression(C=c, max_iter=5000).fit(np.vstack([x, xv]), np.r_[y, yv])
        rows.append((c, m.score(xv, yv), m.score(xt, yt), full.score(xt, yt)))
        print(f"{c:>8g} {rows[-1][1]:>8.4f} {rows[-1][2]:>9.4f} {rows[-1][3]:>31.4f}")
    best_val = max(r[1] for r in rows)
    picked = [f"{r[2]:.4f} (C={r[0]:g})" for r in rows if r[1] == best_val]
    print(f"test/acc at the C with the best val/acc: {', '.join(picked)}")


if __name__ == "__main__":
    main()
