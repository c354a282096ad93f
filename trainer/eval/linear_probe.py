"""`wit eval linear-probe`: logistic regression (L-BFGS) on frozen image features, as the CLIP paper does.

Features are standardised (mean and scale from the data the probe is fit on), which leaves the model class the same
and lets L-BFGS converge in far fewer steps. The inverse regularisation C is picked on a validation split of the training set from a log-spaced grid, then the
probe is refit on the whole training set with that C and scored once on the test set.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from wit.shards.storage import WitError
from wit.trainer.eval import datasets
from wit.shards.options import opt
from wit.trainer.eval.common import DATA_HELP, LabelledOptions, ModelOptions, finish, load
from wit.trainer.eval.features import encode_images


@dataclass(frozen=True, kw_only=True)
class LinearProbeConfig(ModelOptions, LabelledOptions):
    train: str = opt(help="training images; " + DATA_HELP)
    test: str = opt(help="test images, same forms as --train")
    limit_train: int = opt(0, "at most this many training images (0: all)", minimum=0)
    limit_test: int = opt(0, "at most this many test images (0: all)", minimum=0)
    val_fraction: float = opt(0.2, "share of --train held out to choose C")
    c_min: float = opt(1e-6, "smallest C (inverse L2 strength) in the sweep")
    c_max: float = opt(1e6, "largest C in the sweep")
    c_steps: int = opt(13, "log-spaced C values from --c-min to --c-max", minimum=1)
    max_iter: int = opt(1000, "L-BFGS iterations per fit", minimum=1)
    seed: int = opt(0, "seed of the validation split")


def fit(x, y, c: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter))
    with warnings.catch_warnings():  # convergence is reported per C in the results instead
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf, bool(np.max(clf[-1].n_iter_) < max_iter)


def split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices, stratified by class when every class has at least two samples."""
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    return train_test_split(np.arange(len(y)), test_size=val_fraction, random_state=seed, stratify=stratify)


def probe(train_x, train_y, test_x, test_y, cs, val_fraction=0.2, seed=0, max_iter=1000) -> dict:
    """Pick C on a validation split, refit on all of train, score on test (accuracies as fractions)."""
    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(np.unique(train_y)) < 2:
        raise WitError("linear probe: the training set needs at least two classes")
    tr, va = split(train_y, val_fraction, seed)
    sweep = []
    for c in cs:
        clf, converged = fit(train_x[tr], train_y[tr], c, max_iter)
        sweep.append({"C": float(c), "val_accuracy": float((clf.predict(train_x[va]) == train_y[va]).mean()),
                      "converged": converged})
    best = max(sweep, key=lambda s: s["val_accuracy"])  # first (strongest regularisation) among equals
    clf, converged = fit(train_x, train_y, best["C"], max_iter)
    return {"test_accuracy": float((clf.predict(test_x) == test_y).mean()), "best_C": best["C"],
            "val_accuracy": best["val_accuracy"], "converged": converged, "sweep": sweep}


def features(model, preprocess, url, cfg, limit, device, desc):
    source = datasets.labelled(url, cfg.format, cfg.class_field, limit)
    x, labels = encode_images(model, preprocess, source.items(), total=source.count, batch_size=cfg.batch_size,
                              device=device, precision=cfg.precision, desc=desc, normalize=False,
                              workers=cfg.workers)
    return x.numpy(), np.array([str(label) for label in labels])


def run(cfg: LinearProbeConfig) -> dict:
    if not 0 < cfg.val_fraction < 1:
        raise WitError(f"--val-fraction {cfg.val_fraction}: must be between 0 and 1")
    if cfg.c_steps < 1 or not 0 < cfg.c_min <= cfg.c_max:
        raise WitError("--c-min/--c-max/--c-steps: need 0 < c_min <= c_max and c_steps >= 1")
    started = time.monotonic()
    model, preprocess, _, device = load(cfg)
    train_x, train_y = features(model, preprocess, cfg.train, cfg, cfg.limit_train, device, "train images")
    test_x, test_y = features(model, preprocess, cfg.test, cfg, cfg.limit_test, device, "test images")
    cs = np.logspace(np.log10(cfg.c_min), np.log10(cfg.c_max), cfg.c_steps)
    out = probe(train_x, train_y, test_x, test_y, cs, cfg.val_fraction, cfg.seed, cfg.max_iter)
    sweep = out.pop("sweep")
    results = {"task": "linear-probe", "train_images": len(train_y), "test_images": len(test_y),
               "classes": len(np.unique(train_y)), **out, "chance": 1 / len(np.unique(train_y))}
    results = finish(cfg, {**results, "sweep": sweep}, started)
    return results
