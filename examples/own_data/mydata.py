"""Your own dataset for tunelab: a function that returns `tunelab.data.splits.Splits`.

tunelab calls it with the settings of your `data` node as keyword arguments (every key but `name`
and `_target_`), so each of them is a knob you can sweep like any other. `make_splits` carves the
validation split from the training data (seeded by `split_seed`), standardises every split with the
training statistics and records a digest of the arrays, which `tunelab reproduce` checks.
"""

from __future__ import annotations

from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from tunelab.data.splits import Splits, make_splits


def make(*, test_fraction: float = 0.25, val_fraction: float = 0.2, split_seed: int = 0) -> Splits:
    """The wine recognition data (scikit-learn's copy, offline): 178 examples, 13 features, 3
    classes. Examples are flat feature vectors, shape (13,): train them with model=mlp or logreg."""
    x, y = load_wine(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=0
    )
    scaler = StandardScaler().fit(x_train)  # per feature: their scales differ 1000-fold
    x_train, x_test = (scaler.transform(a).astype("float32") for a in (x_train, x_test))
    return make_splits(
        x_train,
        y_train,
        x_test,
        y_test,
        name="wine",
        val_fraction=val_fraction,
        split_seed=split_seed,
    )
