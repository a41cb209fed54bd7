"""The torch detector graph that gets exported: preprocessed images -> scores and anomaly map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .generated import GeneratedHead
from .nets import Discriminator, Encoder, Generator

ANOMALY_OUTPUTS = [
    "anomaly_score", "anomaly_map", "disc_logit", "pixel_residual", "feature_residual", "izif_score", "knn_distance",
]  # fmt: skip
GENERATED_OUTPUT = "generated_logit"
# Score fusion: each component, transformed so that higher = more anomalous, in the order of the fusion buffers.
FUSION_TRANSFORMS = {"pixel_residual": "log", "feature_residual": "log", "disc_logit": "negate", "knn_distance": "log"}
SCORE_METHODS = ("fused", "izif")
KNN_K = 5


def fusion_inputs(pixel: torch.Tensor, feature: torch.Tensor, logit: torch.Tensor, knn: torch.Tensor) -> torch.Tensor:
    """[N, 4] transformed components: log pixel residual, log D-feature residual, minus D's realness logit and
    log kNN distance."""
    return torch.stack([torch.log(pixel + 1e-8), torch.log(feature + 1e-8), -logit, torch.log(knn + 1e-8)], dim=1)


def unit_rows(f: torch.Tensor) -> torch.Tensor:
    return f / (f.norm(dim=1, keepdim=True) + 1e-12)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 2-D Gaussian [1, 1, k, k] with k = 2 * ceil(2 sigma) + 1."""
    radius = max(1, int(2 * sigma + 0.999))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum())[None, None]


class ScoringModel(nn.Module):
    """izi_f scoring (f-AnoGAN) built from a trained E, G and D.

    Outputs, per image: ``anomaly_score``; ``anomaly_map`` [N, 1, H, W] = |x - G(E(x))| averaged over channels
    and smoothed; the components ``disc_logit`` (D's realness judgement), ``pixel_residual``,
    ``feature_residual``, ``izif_score`` = pixel residual + kappa * D-feature residual, and ``knn_distance``:
    the mean squared distance from the image's unit-length D features to those of its ``KNN_K`` nearest
    images in the memory bank (training images, see :meth:`set_memory_bank`).

    ``anomaly_score`` is ``izif_score`` until :meth:`set_fusion` is called; then it is the weighted sum of the
    components' robust z-scores (see :func:`fusion_inputs`), with centres and scales fitted on normal images.

    With a generated-image ``head`` the graph takes a second input ``crops`` [N, K, C, S, S] (the native-scale
    crops of each image, see imaging.native_crops) and adds ``generated_logit`` [N], the head's logit
    averaged over the K crops.
    """

    def __init__(
        self, G: Generator, D: Discriminator, E: Encoder, kappa: float, map_sigma: float = 1.0,
        head: GeneratedHead | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.G, self.D, self.E = G.eval(), D.without_spectral_norm(), E.eval()
        self.H = None if head is None else head.eval()
        self.kappa = float(kappa)
        self.register_buffer("kernel", gaussian_kernel(map_sigma) if map_sigma > 0 else torch.ones(1, 1, 1, 1))
        self.fused = False
        self.register_buffer("fusion_center", torch.zeros(len(FUSION_TRANSFORMS)))
        self.register_buffer("fusion_scale", torch.ones(len(FUSION_TRANSFORMS)))
        self.register_buffer("fusion_weight", torch.zeros(len(FUSION_TRANSFORMS)))
        self.register_buffer("bank", torch.zeros(0, self.D.feature_dim, dtype=torch.float16))
        self.requires_grad_(False)

    @torch.no_grad()
    def set_memory_bank(self, images: torch.Tensor, batch: int = 256) -> None:
        """Store the unit-length D features of ``images`` (normal training images), as float16 to halve the file."""
        feats = [unit_rows(self.D(images[i : i + batch])[1]) for i in range(0, len(images), batch)]
        self.bank = torch.cat(feats).to(torch.float16)

    def set_fusion(self, center: list[float], scale: list[float], weight: list[float]) -> None:
        """Make ``anomaly_score`` = sum(weight * (fusion_inputs - center) / scale)."""
        for name, values in (("fusion_center", center), ("fusion_scale", scale), ("fusion_weight", weight)):
            getattr(self, name).copy_(torch.tensor(values, dtype=torch.float32))
        self.fused = True

    def use_scoring(self, scoring: dict) -> "ScoringModel":
        """Apply an exported spec's ``scoring`` entry, to rebuild exactly the graph that was exported."""
        if scoring.get("method") == "fused":
            self.set_fusion(scoring["center"], scoring["scale"], scoring["weight"])
        return self

    @property
    def input_names(self) -> list[str]:
        return ["image"] if self.H is None else ["image", "crops"]

    @property
    def output_names(self) -> list[str]:
        return list(ANOMALY_OUTPUTS) + ([] if self.H is None else [GENERATED_OUTPUT])

    def forward(self, image: torch.Tensor, crops: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        outs = self.anomaly(image)
        if self.H is None:
            return outs
        if crops is None:
            raise ValueError("this scoring graph has a generated-image head: pass crops [N, K, C, S, S] too")
        n, k = crops.shape[0], crops.shape[1]
        logits = self.H(crops.flatten(0, 1)).view(n, k)
        return (*outs, logits.mean(1))

    def knn_distance(self, features: torch.Tensor) -> torch.Tensor:
        if len(self.bank) == 0:
            raise ValueError("the scoring graph has no memory bank: call set_memory_bank(training images) first")
        u, bank = unit_rows(features), self.bank.float()
        nearest = (u @ bank.T).topk(min(KNN_K, len(bank)), dim=1).indices
        # Distances recomputed from the differences: 2 - 2 cos cancels badly for near neighbours.
        return (u[:, None, :] - bank[nearest]).pow(2).sum(2).mean(1)

    def anomaly(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rec = self.G(self.E(image))
        logit, f_x = self.D(image)
        _, f_rec = self.D(rec)
        pixel = (image - rec).pow(2).flatten(1).mean(1)
        feature = (f_x - f_rec).pow(2).mean(1)
        residual = (image - rec).abs().mean(1, keepdim=True)
        pad = self.kernel.shape[-1] // 2
        amap = F.conv2d(F.pad(residual, (pad, pad, pad, pad), mode="replicate"), self.kernel)
        izif = pixel + self.kappa * feature
        knn = self.knn_distance(f_x)
        score = izif
        if self.fused:
            z = (fusion_inputs(pixel, feature, logit, knn) - self.fusion_center) / self.fusion_scale
            score = (z * self.fusion_weight).sum(1)
        return score, amap, logit, pixel, feature, izif, knn
