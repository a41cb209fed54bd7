"""Multinomial logistic regression in numpy (the class-balance classifier): features standardised on the fitting
rows, an L2 penalty chosen on an inner split of the fitting rows, Nesterov-accelerated gradient descent with the
step from the loss's Lipschitz bound. Deterministic: same rows, same seed, same weights."""

from __future__ import annotations

import numpy as np

PENALTIES = (0.0025, 0.025, 0.25)  # L2 weight on the mean loss; one is chosen on an inner 25 % split
ITERATIONS = 300
INNER_FRACTION = 0.25


class Logistic:
    def __init__(self, shift: np.ndarray, scale: np.ndarray, w: np.ndarray, b: np.ndarray, penalty: float) -> None:
        self.shift, self.scale, self.w, self.b, self.penalty = shift, scale, w, b, penalty

    def scores(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.shift) / self.scale) @ self.w + self.b

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.scores(x).argmax(1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _descend(x: np.ndarray, y: np.ndarray, n_classes: int, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """Minimise mean cross-entropy + penalty/2 * |w|^2 on standardised ``x`` (with a bias column)."""
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    onehot = np.eye(n_classes)[y]
    v = np.random.default_rng(0).normal(size=xb.shape[1])
    for _ in range(20):  # power iteration: largest eigenvalue of xb^T xb / n
        v = xb.T @ (xb @ v) / len(xb)
        top = np.linalg.norm(v)
        v /= top
    step = 1.0 / (0.5 * top + penalty)
    w = np.zeros((xb.shape[1], n_classes))
    prev, t = w, 1.0
    for _ in range(ITERATIONS):
        grad = xb.T @ (_softmax(xb @ w) - onehot) / len(xb)
        grad[:-1] += penalty * w[:-1]
        new = w - step * grad
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        w, prev, t = new + (t - 1) / t_next * (new - prev), new, t_next
    return prev[:-1], prev[-1]


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int = 0) -> Logistic:
    """Fit on rows ``x`` with class indices ``y``; the penalty is the one of PENALTIES with the best accuracy on an
    inner split (by seed) of these rows, then the model is refitted on all of them."""
    x = np.asarray(x, np.float64)
    shift, scale = x.mean(0), np.maximum(x.std(0), 1e-12)
    z = (x - shift) / scale
    order = np.random.default_rng(seed).permutation(len(z))
    n_inner = int(len(z) * INNER_FRACTION)
    inner, rest = order[:n_inner], order[n_inner:]
    best = PENALTIES[len(PENALTIES) // 2]
    if n_inner >= n_classes and len(rest) >= n_classes:
        accuracy = []
        for p in PENALTIES:
            w, b = _descend(z[rest], y[rest], n_classes, p)
            accuracy.append(((z[inner] @ w + b).argmax(1) == y[inner]).mean())
        best = PENALTIES[int(np.argmax(accuracy))]
    w, b = _descend(z, y, n_classes, best)
    return Logistic(shift, scale, w, b, best)
