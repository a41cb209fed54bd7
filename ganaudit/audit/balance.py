"""Class balance: a logistic-regression classifier fitted on labelled reference features predicts the class of each
generated image; predicted shares are compared with the classifier's predicted shares on held-out reference images
(bootstrap intervals) and summarised by the L2 fairness discrepancy (Choi et al. 2020) to those reference shares and
to uniform. A class with no generated sample counts as zero."""

from __future__ import annotations

import numpy as np

from .logistic import fit_logistic
from .stats import bootstrap_interval

TEST_FRACTION = 0.2


def class_balance(
    ref: np.ndarray, ref_y: np.ndarray, classes: list[str], gen: np.ndarray, *, seed: int = 0, rounds: int = 1000
) -> dict:
    """Predicted class shares of ``gen`` against the shares of labelled reference features (labels index
    ``classes``). The classifier is fitted on (1 - TEST_FRACTION) of the reference and scored on the rest."""
    n_classes = len(classes)
    order = np.random.default_rng(seed).permutation(len(ref))
    n_test = max(1, int(round(len(ref) * TEST_FRACTION)))
    test, fit = order[:n_test], order[n_test:]
    model = fit_logistic(ref[fit], ref_y[fit], n_classes, seed=seed)
    test_pred = model.predict(ref[test])
    accuracy = float((test_pred == ref_y[test]).mean())
    pred = model.predict(gen)
    # Generated shares are predictions, so they are compared with the predicted shares of held-out reference
    # images: the classifier's confusions then bias both sides alike. The label shares are reported too.
    ref_share = np.bincount(test_pred, minlength=n_classes) / len(test_pred)
    label_share = np.bincount(ref_y, minlength=n_classes) / len(ref_y)

    def shares(idx: np.ndarray) -> np.ndarray:
        return np.bincount(pred[idx], minlength=n_classes) / len(idx)

    gen_share = shares(np.arange(len(pred)))
    lo, hi = bootstrap_interval(shares, len(pred), rounds=rounds, seed=seed)
    uniform = np.full(n_classes, 1.0 / n_classes)

    def l2(idx: np.ndarray) -> np.ndarray:
        s = shares(idx)
        return np.array([np.linalg.norm(s - ref_share), np.linalg.norm(s - uniform)])

    l2_lo, l2_hi = bootstrap_interval(l2, len(pred), rounds=rounds, seed=seed + 1)
    return {
        "classifier": f"logistic regression on reference features (L2 penalty {model.penalty:g})",
        "classifier_accuracy": accuracy,
        "classifier_test_images": int(n_test),
        "fairness_discrepancy_reference": float(np.linalg.norm(gen_share - ref_share)),
        "fairness_discrepancy_reference_ci": [float(l2_lo[0]), float(l2_hi[0])],
        "fairness_discrepancy_uniform": float(np.linalg.norm(gen_share - uniform)),
        "fairness_discrepancy_uniform_ci": [float(l2_lo[1]), float(l2_hi[1])],
        "classes": [
            {"class": c, "reference_share": float(ref_share[i]), "reference_label_share": float(label_share[i]),
             "generated_share": float(gen_share[i]), "generated_ci": [float(lo[i]), float(hi[i])]}
            for i, c in enumerate(classes)
        ],  # fmt: skip
        "predicted": pred,
    }
