"""The torch detector graph that gets exported: preprocessed images -> scores and anomaly map."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ModelFormatError
from .generated import GeneratedHead
from .nets import ROTATIONS, Discriminator, Encoder, Generator
from ..runtime.detector import PATCH_MATRIX_BYTES


@dataclass(frozen=True)
class Component:
    """One score component of the fused anomaly score: its graph output, the transform that makes higher mean
    more anomalous (``log`` or ``negate``), and its weight for each layout of the training images (chosen on dev
    splits, never on test images: docs/benchmarks.md, Q1, Q3 and Q4)."""

    name: str
    transform: str
    weights: dict[str, float]
    needs: str | None = None  # the part of D the component needs ("rotation": the rotation head)


# The one table of score components: graph outputs, fusion inputs, weights, the spec and `info` derive from it.
# Layouts: `aligned` (images share a layout), `stationary` (every position alike: textures), `oriented` (aligned
# images scored by a D that learnt the rotation task: Q1 and Q4 dev splits together chose its weights, and that
# the larger of its two z-scores is the score: see LAYOUT_COMBINE).
COMPONENTS = (
    Component("pixel_residual", "log", {"aligned": 0.0, "stationary": 0.0, "oriented": 0.0}),
    Component("feature_residual", "log", {"aligned": 1.0, "stationary": 0.0, "oriented": 1.0}),
    Component("disc_logit", "negate", {"aligned": 0.5, "stationary": 0.0, "oriented": 0.0}),
    Component("knn_distance", "log", {"aligned": 4.0, "stationary": 0.0, "oriented": 0.0}),
    Component("patch_distance", "log", {"aligned": 0.0, "stationary": 1.0, "oriented": 0.0}),
    Component("rotation_score", "log", {"aligned": 0.0, "stationary": 0.0, "oriented": 1.0}, needs="rotation"),
)
LAYOUT_NAMES = ("aligned", "stationary", "oriented")
# How a layout combines its weighted z-scores: their sum, or the largest of those with a weight (an image is
# strange when either view says so: on photographs D's rotation score fails on some classes, deer or birds seen at
# every angle, where the feature residual does not; chosen on the Q4 and Q1 dev splits, docs/benchmarks.md, Q4).
LAYOUT_COMBINE = {"aligned": "sum", "stationary": "sum", "oriented": "max"}
COMBINE_METHODS = ("sum", "max")
# Graph outputs: the score and map, then the raw components (izif_score is f-AnoGAN's score, not fused).
BASE_OUTPUTS = ["anomaly_score", "anomaly_map", "disc_logit", "pixel_residual", "feature_residual", "izif_score",
                "knn_distance", "patch_distance"]  # fmt: skip
GENERATED_OUTPUT = "generated_logit"
SCORE_METHODS = ("fused", "izif")
KNN_K = 5
# The kNN score reads the memory bank in its top KNN_DIMS principal directions, plus the query's distance from
# that subspace: 16x smaller and cheaper than the 2048-d features, within 0.002 AUROC of them on Q1's dev runs
# (docs/benchmarks.md, "Detector cost").
KNN_DIMS = 128
# Patch memory bank (anomaly map): D's first-stage features, 3x3 average-pooled, of the memory-bank images;
# a greedy k-center coreset of PATCH_BANK_SIZE among PATCH_CANDIDATES random positions. Chosen on the Q3
# texture dev split (docs/benchmarks.md), as is the map's smoothing.
PATCH_BANK_SIZE = 4096
PATCH_CANDIDATES = 65536
# The search's expanded form leaves float32 noise of about 1e-7 |features|^2 in a squared distance; the square
# root would blow that up near an exact match (up to 1e-3 |features|). A floor of PATCH_FLOOR times the bank's
# mean squared norm (distances under 1 % of a typical feature's length) keeps the map's noise under 1e-4.
PATCH_FLOOR = 1e-4
# The exported search takes the bank PATCH_CHUNK entries at a time (a Gemm and a ReduceMin each, then the least of
# their minima): each Gemm's output then stays in the CPU's cache instead of one [positions, bank] matrix going
# through memory, which halves the search's time (docs/benchmarks.md, "Detector cost"); at most
# PATCH_MAX_CHUNKS of them, so that huge banks do not make huge graphs.
PATCH_CHUNK = 64
PATCH_MAX_CHUNKS = 256
MAP_SIGMA = 2.0


def components_of(has_rotation: bool) -> tuple[Component, ...]:
    """The components a graph has: all, less those whose part of D it lacks."""
    return tuple(c for c in COMPONENTS if c.needs is None or (c.needs == "rotation" and has_rotation))


def fusion_inputs(raw: dict[str, torch.Tensor], components: tuple[Component, ...]) -> torch.Tensor:
    """[N, len(components)]: each raw component transformed so that higher = more anomalous."""
    cols = [torch.log(raw[c.name] + 1e-8) if c.transform == "log" else -raw[c.name] for c in components]
    return torch.stack(cols, dim=1)


def unit_rows(f: torch.Tensor) -> torch.Tensor:
    return f / (f.norm(dim=1, keepdim=True) + 1e-12)


def k_center(points: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of a greedy k-center coreset of ``n`` rows (starting from row 0): each pick is the row farthest
    from those picked so far, so the coreset covers rare patterns that random sampling misses."""
    picks = [0]
    nearest = (points - points[0]).pow(2).sum(1)
    for _ in range(min(n, len(points)) - 1):
        i = int(nearest.argmax())
        if nearest[i] == 0:  # every row is a copy of a pick: fewer distinct patterns than n
            break
        picks.append(i)
        nearest = torch.minimum(nearest, (points - points[i]).pow(2).sum(1))
    return torch.tensor(picks)


def nearest_sq_distance(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Squared distance of each query row to its nearest bank row: |q|^2 + min(|b|^2 - 2 q.b), Gemms and
    ReduceMins (ArgMin plus a recomputed difference cost twice as much in onnxruntime, docs/benchmarks.md).
    Exported, the bank goes in chunks of PATCH_CHUNK entries (see there) over the whole batch; run eagerly, it
    goes PATCH_MATRIX_BYTES of the matrix at a time, as the runtime does by splitting batches."""
    sq = bank.pow(2).sum(1)
    if torch.onnx.is_in_onnx_export():
        size = max(PATCH_CHUNK, -(-len(bank) // PATCH_MAX_CHUNKS))
        least = None  # one Split of the bank, then a Gemm, a ReduceMin and a Min per chunk: a small graph
        for sq_part, bank_part in zip(torch.split(sq, size), torch.split(bank.T, size, dim=1)):
            m = torch.addmm(sq_part, q, bank_part, alpha=-2.0).amin(1)
            least = m if least is None else torch.minimum(least, m)
    else:
        step = max(1, PATCH_MATRIX_BYTES // (4 * len(bank)))
        least = torch.cat([torch.addmm(sq, q[i : i + step], bank.T, alpha=-2.0).amin(1) for i in range(0, len(q), step)])
    return (least + q.pow(2).sum(1)).clamp_min(0.0)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 2-D Gaussian [1, 1, k, k] with k = 2 * ceil(2 sigma) + 1."""
    radius = max(1, int(2 * sigma + 0.999))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum())[None, None]


class ScoringModel(nn.Module):
    """The detector graph built from a trained E, G and D (and the generated-image head).

    Outputs, per image: ``anomaly_score``; ``anomaly_map`` [N, 1, H, W]: for each position, the distance from
    D's local (first-stage, 3x3-pooled) features to the nearest entry of the patch bank, upsampled, smoothed
    and divided by ``map_scale`` (see :meth:`set_patch_bank`); the components ``disc_logit`` (D's realness
    judgement), ``pixel_residual``, ``feature_residual``, ``izif_score`` = pixel residual + kappa * D-feature
    residual, ``knn_distance``: the mean squared distance from the image's unit-length D features to those of
    its ``KNN_K`` nearest images in the memory bank (training images, see :meth:`set_memory_bank`), in the
    bank's principal subspace, plus the features' squared distance from that subspace,
    ``patch_distance``: the largest value of the unscaled map, and, when D was trained with the rotation task,
    ``rotation_score`` (see :meth:`rotation_score`).

    ``anomaly_score`` is ``izif_score`` until :meth:`set_fusion` is called; then it is the weighted sum of the
    components' robust z-scores (see :func:`fusion_inputs`), with centres and scales fitted on normal images.

    With a generated-image ``head`` the graph takes a second input ``crops`` [N, K, C, S, S] (the native-scale
    crops of each image, see imaging.native_crops) and adds ``generated_logit`` [N], the head's logit
    averaged over the K crops.
    """

    def __init__(
        self, G: Generator, D: Discriminator, E: Encoder, kappa: float, map_sigma: float = MAP_SIGMA,
        head: GeneratedHead | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.G, self.D, self.E = G.eval(), D.without_spectral_norm(), E.eval()
        self.H = None if head is None else head.eval()
        self.kappa = float(kappa)
        self.register_buffer("kernel", gaussian_kernel(map_sigma) if map_sigma > 0 else torch.ones(1, 1, 1, 1))
        self.fused = False
        self.components = components_of(self.has_rotation)
        self.register_buffer("fusion_center", torch.zeros(len(self.components)))
        self.register_buffer("fusion_scale", torch.ones(len(self.components)))
        self.register_buffer("fusion_weight", torch.zeros(len(self.components)))
        self.combine = "sum"
        self.register_buffer("bank", torch.zeros(0, KNN_DIMS, dtype=torch.float16))
        self.register_buffer("knn_mean", torch.zeros(self.D.feature_dim))
        self.register_buffer("knn_basis", torch.zeros(self.D.feature_dim, 0))
        self.register_buffer("patch_bank", torch.zeros(0, self.D.trunk[0].out_channels, dtype=torch.float16))
        self.register_buffer("patch_mean", torch.zeros(self.D.trunk[0].out_channels))
        self.register_buffer("patch_floor", torch.zeros(()))
        self.register_buffer("map_scale", torch.ones(()))
        self.requires_grad_(False)

    @torch.no_grad()
    def set_memory_bank(self, images: torch.Tensor, batch: int = 256) -> None:
        """Store the unit-length D features of ``images`` (normal training images) in their top KNN_DIMS
        principal directions (centred on their mean), as float16 to keep the file small."""
        u = torch.cat([unit_rows(self.D(images[i : i + batch])[1]) for i in range(0, len(images), batch)])
        self.knn_mean = u.mean(0)
        _, _, vt = torch.linalg.svd(u - self.knn_mean, full_matrices=False)
        self.knn_basis = vt[: min(KNN_DIMS, len(vt))].T.contiguous()
        self.bank = ((u - self.knn_mean) @ self.knn_basis).to(torch.float16)

    @torch.no_grad()
    def set_patch_bank(
        self, images: torch.Tensor, seed: int = 0, batch: int = 256, size: int = PATCH_BANK_SIZE
    ) -> None:
        """Store a k-center coreset of ``size`` local D features of ``images`` (normal training images), float16.

        The candidates are PATCH_CANDIDATES random positions of all images; features are computed a batch at a
        time and only the candidates kept, so memory does not grow with the number of images."""
        probe = self.local_features(images[:1])
        c, per_image = probe.shape[1], probe.shape[2] * probe.shape[3]
        g = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(len(images) * per_image, generator=g)[:PATCH_CANDIDATES]
        rows = torch.empty(len(chosen), c)
        for start in range(0, len(images), batch):
            f = self.local_features(images[start : start + batch])
            here = (chosen >= start * per_image) & (chosen < (start + len(f)) * per_image)
            rows[here] = f.permute(0, 2, 3, 1).reshape(-1, c)[chosen[here] - start * per_image]
        self.patch_bank = rows[k_center(rows, size)].to(torch.float16)
        self.patch_mean = self.patch_bank.float().mean(0)
        self.patch_floor.fill_(PATCH_FLOOR * float((self.patch_bank.float() - self.patch_mean).pow(2).sum(1).mean()))

    def set_map_scale(self, value: float) -> None:
        """``anomaly_map`` = unscaled map / ``value``."""
        self.map_scale.fill_(float(value))

    def set_fusion(self, center: list[float], scale: list[float], weight: list[float], combine: str = "sum") -> None:
        """Make ``anomaly_score`` = sum(weight * (fusion_inputs - center) / scale), or with ``combine="max"`` the
        largest of those terms whose weight is not 0."""
        if combine not in COMBINE_METHODS:
            raise ModelFormatError(f"unknown fusion combine {combine!r}: expected one of {', '.join(COMBINE_METHODS)}")
        self.combine = combine
        for name, values in (("fusion_center", center), ("fusion_scale", scale), ("fusion_weight", weight)):
            getattr(self, name).copy_(torch.tensor(values, dtype=torch.float32))
        self.fused = True

    def use_scoring(self, scoring: dict) -> "ScoringModel":
        """Apply an exported spec's ``scoring`` entry, to rebuild exactly the graph that was exported."""
        names = [c.name for c in self.components]
        if scoring.get("method") == "fused" and scoring.get("components") != names:
            raise ModelFormatError(
                f"this spec fuses {scoring.get('components')}, this graph {names}: it was exported by another "
                "ganaudit version; export the run again"
            )
        if "map_scale" in scoring:
            self.set_map_scale(scoring["map_scale"])
        if scoring.get("method") == "fused":
            self.set_fusion(scoring["center"], scoring["scale"], scoring["weight"], scoring.get("combine", "sum"))
        return self

    @property
    def has_rotation(self) -> bool:
        """Whether D learnt the rotation task (the graph then outputs ``rotation_score``)."""
        return self.D.rotation_head is not None

    @property
    def input_names(self) -> list[str]:
        return ["image"] if self.H is None else ["image", "crops"]

    @property
    def output_names(self) -> list[str]:
        extra = [c.name for c in self.components if c.name not in BASE_OUTPUTS]
        return BASE_OUTPUTS + extra + ([] if self.H is None else [GENERATED_OUTPUT])

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
        """Mean squared distance to the KNN_K nearest bank images in the principal subspace, plus the squared
        distance of the image's unit features from that subspace (its part no training image explains)."""
        if len(self.bank) == 0:
            raise ValueError("the scoring graph has no memory bank: call set_memory_bank(training images) first")
        centred = unit_rows(features) - self.knn_mean
        p, bank = centred @ self.knn_basis, self.bank.float()
        off_subspace = (centred.pow(2).sum(1) - p.pow(2).sum(1)).clamp_min(0.0)
        nearest = (2.0 * p @ bank.T - bank.pow(2).sum(1)).topk(min(KNN_K, len(bank)), dim=1).indices
        # Distances recomputed from the differences: the expanded form cancels badly for near neighbours.
        return (p[:, None, :] - bank[nearest]).pow(2).sum(2).mean(1) + off_subspace

    def local_features(self, image: torch.Tensor) -> torch.Tensor:
        """D's first stride-2 stage (conv + activation), 3x3 average-pooled: [N, C, H/2, W/2]."""
        return F.avg_pool2d(self.D.trunk[:2](image), 3, 1, 1)

    def patch_map(self, image: torch.Tensor) -> torch.Tensor:
        """Unscaled anomaly map [N, 1, H, W]: distance of each position's local features to the patch bank."""
        if len(self.patch_bank) == 0:
            raise ValueError("the scoring graph has no patch bank: call set_patch_bank(training images) first")
        f = self.local_features(image)
        n, c, h, w = f.shape
        # Centred on the bank's mean: the search's expanded form then cancels far less (the features are >= 0).
        q, bank = f.permute(0, 2, 3, 1).reshape(-1, c) - self.patch_mean, self.patch_bank.float() - self.patch_mean
        d = (nearest_sq_distance(q, bank) + self.patch_floor).sqrt().reshape(n, 1, h, w)
        up = F.interpolate(d, size=image.shape[-2:], mode="bilinear", align_corners=False)
        pad = self.kernel.shape[-1] // 2
        return F.conv2d(F.pad(up, (pad, pad, pad, pad), mode="replicate"), self.kernel)

    @staticmethod
    def rotation_score(logits: torch.Tensor) -> torch.Tensor:
        """How badly D tells which way images and their turned copies are up, from D's rotation ``logits``
        [4N, 4] (Discriminator.with_rotations): the summed cross-entropy of its rotation predictions over the 4
        rotations (GeoTrans-style); high for images unlike the training data."""
        k = len(ROTATIONS)
        log_p = F.log_softmax(logits.unflatten(0, (k, -1)), dim=-1)  # [rotation, image, predicted rotation]
        # Shape-free (exports with a dynamic batch): pick each rotation's own class with an identity mask.
        return -(log_p * torch.eye(k, device=logits.device)[:, None, :]).sum((0, 2))

    def raw_components(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(every raw score component by name, the unscaled anomaly map) of ``image``."""
        rec = self.G(self.E(image))
        if self.has_rotation:  # the upright image's trunk pass is the first quarter of the rotations' pass
            logit, f_x, rotation_logits = self.D.with_rotations(image)
        else:
            logit, f_x = self.D(image)
        _, f_rec = self.D(rec)
        raw_map = self.patch_map(image)
        raw = {
            "disc_logit": logit,
            "pixel_residual": (image - rec).pow(2).flatten(1).mean(1),
            "feature_residual": (f_x - f_rec).pow(2).mean(1),
            "knn_distance": self.knn_distance(f_x),
            "patch_distance": raw_map.flatten(1).amax(1),
        }
        raw["izif_score"] = raw["pixel_residual"] + self.kappa * raw["feature_residual"]
        if self.has_rotation:
            raw["rotation_score"] = self.rotation_score(rotation_logits)
        return raw, raw_map

    def anomaly(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The graph's anomaly outputs, in ``output_names`` order."""
        raw, raw_map = self.raw_components(image)
        score = raw["izif_score"]
        if self.fused:
            z = (fusion_inputs(raw, self.components) - self.fusion_center) / self.fusion_scale
            terms = z * self.fusion_weight
            if self.combine == "max":  # terms without weight cannot win (a [C] penalty: the batch stays dynamic)
                score = (terms - 1e9 * (self.fusion_weight == 0).float()).amax(1)
            else:
                score = terms.sum(1)
        names = [n for n in self.output_names if n not in ("anomaly_score", "anomaly_map", GENERATED_OUTPUT)]
        return (score, raw_map / self.map_scale, *(raw[n] for n in names))
