"""GAN training, then izi_f encoder training (f-AnoGAN), then the generated-image head; checkpoints and resume.

The run directory's files are named and read in :mod:`ganaudit.training.rundir`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from . import ddp
from ..core.atomic import atomic_write
from .datasets import Dataset, split_validation
from ..core.errors import ConfigError, ModelFormatError
from ..core.grid import encode_png, make_grid
from .generated import (
    RESIZE_MAX_COLOUR, RESIZE_SCALE, GeneratedHead, PoolSources, fake_pool, load_snapshots, snapshot_every,
    training_crops,
)  # fmt: skip
from .aux_generators import aux_pool, parse_families
from ..core.layout import alignment, is_stationary
from .torch_files import load_tensors
from .losses import LOSSES, diff_augment, gradient_penalty, instance_noise, izif_loss, parse_augment, r1_penalty
from .nets import D_HEADS, Discriminator, Encoder, Generator, rotation_targets
from .rundir import MEMORY_BANK, MEMORY_BANK_MAX, RunDir
from ..core.spec import PreprocessSpec, check_size

log = logging.getLogger(__name__)

# Generated-head steps per GAN step by default: 4x beat 0.2x, 0.6x, 1.2x and 2x on the Q2 development split
# (robustness to blur and resizing, accuracy at the threshold; docs/benchmarks.md, Q2).
HEAD_STEPS_PER_GAN_STEP = 4
# The head's next batch (OpenCV augmentation and crops, about a fifth of a step) is made on a thread while
# torch runs the current step; a batch depends only on its step, so the result is the same either way.
HEAD_PREFETCH = True
MODE_COLLAPSE_RATIO = 0.5
HEAD_RETRAIN_OPTIONS = ("head_lr", "head_aux", "head_aux_steps", "head_aux_share", "head_spectral", "head_npr", "head_resize_max")  # --retrain-head takes these anew
PHASE_NAMES = {"gan": "GAN", "encoder": "encoder", "head": "generated head"}


@dataclass
class TrainConfig:
    """Every training hyper-parameter. Defaults are the tuned ones (see docs/benchmarks.md)."""

    size: int = 32
    channels: int = 1
    fit: str = "stretch"
    loss: str = "hinge"
    steps: int = 3000
    encoder_steps: int = 2000
    batch_size: int = 64
    seed: int = 0
    z_dim: int = 64
    width: int = 32
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    lr_e: float = 5e-4
    n_critic: int = 1
    ema: float = 0.999
    spectral_norm: bool = True
    minibatch_std: bool = True
    # The GAN step as fast as DCGAN's (docs/benchmarks.md T1), off by default: D's last layer (nets.D_HEADS), and
    # the G step reusing the generated batch of the (last) D step (one G forward per step instead of two).
    d_head: str = "conv"
    reuse_fakes: bool = False
    r1: float = 0.0
    gp: float = 10.0
    instance_noise: float = 0.0
    kappa: float = 1.0
    # Self-supervised rotation task on D (SS-GAN, Chen et al. 2019): weight of D's rotation loss on real images
    # (0: off), and of G's on its samples. Its score joins the fused anomaly score (the `oriented` layout). None
    # (auto, resolved by `train` once the data is loaded, see auto_rotation): on for colour images that are not
    # textures, where it lifts CIFAR-10 photographs far above the pixel baselines; off for greyscale images, where
    # it costs MNIST digits 0.01-0.06 AUROC (docs/benchmarks.md, Q4).
    rotation: float | None = None
    rotation_g: float = 0.2
    # Differentiable augmentation of every image D judges in the GAN phase, real and generated alike (DiffAugment):
    # "none" or a comma list of "translation", "flip".
    augment: str = "none"
    val_fraction: float = 0.1
    # Generated-image head (trained after the encoder; see generated.py). Off by default in the Python API
    # (existing configs keep their meaning); `ganaudit train` turns it on unless --no-generated-head.
    generated_head: bool = False
    head_steps: int | None = None  # None: HEAD_STEPS_PER_GAN_STEP x the GAN steps (resolved on construction)
    head_lr: float = 1e-4
    head_pool: int = 4096
    head_spectral: bool = True
    head_npr: bool | None = None  # None (auto, resolved by `train`): on for colour images (see resolve_auto)
    # The head's largest training resize factor; None (auto): 3 for colour images, 2 for greyscale ones
    head_resize_max: float | None = None
    # Auxiliary generators of other families in the head's fake pool (aux_generators.py): "" / "none", "all",
    # or a comma list; they take head_aux_share of the pool and train head_aux_steps steps each.
    head_aux: str = ""
    head_aux_steps: int = 400
    head_aux_share: float = 0.5
    native_crops: int = 4
    scale_view: bool = True  # the head also scores large images downscaled to `size` (imaging.head_regions)
    sample_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 25

    def __post_init__(self) -> None:
        self._check_types_and_bounds()
        check_size(self.size)
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.d_head not in D_HEADS:
            raise ConfigError(f"unknown d-head {self.d_head!r}: choose one of {', '.join(D_HEADS)}")
        for name in ("steps", "encoder_steps", "batch_size", "n_critic", "z_dim", "width", "head_pool"):
            if getattr(self, name) < (0 if name.endswith("steps") else 1):
                raise ConfigError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if (self.rotation or 0) < 0 or self.rotation_g < 0:
            raise ConfigError(f"rotation weights must be >= 0, got {self.rotation} and {self.rotation_g}")
        try:
            self.augment = ",".join(parse_augment(self.augment)) or "none"  # normalised: validated, fixed order
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}")
        if self.head_steps is not None and self.head_steps < 0:
            raise ConfigError(f"head-steps must be positive, got {self.head_steps}")
        if self.head_steps is None:
            self.head_steps = max(1, HEAD_STEPS_PER_GAN_STEP * self.steps)
        self.head_aux = ",".join(parse_families(self.head_aux))  # normalised: validated, fixed order
        if not 0 <= self.head_aux_share < 1 or self.head_aux_steps < 1:
            raise ConfigError("head-aux-share must be in [0, 1) and head-aux-steps positive")
        if self.generated_head and not 1 <= self.native_crops <= 16:
            raise ConfigError(f"native-crops must be 1..16 with the generated head, got {self.native_crops}")

    def _check_types_and_bounds(self) -> None:
        """Every field of the type it is declared with, numbers finite and within sane bounds: a config.json edited
        by hand (or by a stranger) must fail here, not as a traceback or a terabyte allocation further on."""
        for f in fields(self):
            value, kinds = getattr(self, f.name), _FIELD_KINDS.get(str(f.type))
            if kinds is None or (value is None and "None" in str(f.type)):
                continue
            if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
                raise ConfigError(f"{f.name.replace('_', '-')} must be {_KIND_NAMES[str(f.type)]}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name.replace('_', '-')} must be a finite number, got {value}")
        for name, low, high in _BOUNDS:
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ConfigError(f"{name.replace('_', '-')} must be between {low} and {high}, got {value}")

    @property
    def n_head_steps(self) -> int:
        if not self.generated_head:
            return 0
        assert self.head_steps is not None
        return self.head_steps

    @property
    def total_steps(self) -> int:
        return self.steps + self.encoder_steps + self.n_head_steps

    @property
    def preprocess(self) -> PreprocessSpec:
        crops = self.native_crops if self.generated_head else 0
        return PreprocessSpec(
            size=self.size, channels=self.channels, fit=self.fit, native_crops=crops, scale_view=bool(crops) and self.scale_view
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d.setdefault("generated_head", False)  # runs written before the head existed have none
        d.setdefault("rotation", 0.0)  # nor the rotation task or NPR
        d.setdefault("head_npr", False)
        d.setdefault("head_resize_max", RESIZE_SCALE[1])  # runs before the option had the 2x range
        d.setdefault("scale_view", False)  # runs before the scale view stored native crops only
        d.setdefault("d_head", "conv")  # runs before the options had the conv head and two G forwards
        d.setdefault("reuse_fakes", False)
        if d.get("head_steps") is None and "steps" in d:  # written when the default was a fifth of the GAN steps
            d["head_steps"] = max(1, d["steps"] // 5)
        return cls(**d)


# The types TrainConfig's fields may hold (dataclass annotations are strings here: `from __future__`).
_FIELD_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
    "float | None": (int, float), "int | None": (int,), "bool | None": (bool,),
}  # fmt: skip
_KIND_NAMES = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
               "float | None": "a number", "int | None": "a whole number", "bool | None": "true or false"}  # fmt: skip
# Sane bounds (inclusive): far beyond any useful run, short of allocations that take the machine down.
_BOUNDS = (
    ("width", 1, 1024), ("z_dim", 1, 4096), ("batch_size", 1, 65536), ("seed", 0, 2**63 - 1),
    ("lr_g", 1e-12, 10.0), ("lr_d", 1e-12, 10.0), ("lr_e", 1e-12, 10.0), ("head_lr", 1e-12, 10.0),
    ("kappa", 0.0, 1e6), ("r1", 0.0, 1e6), ("gp", 0.0, 1e6), ("instance_noise", 0.0, 100.0),
    ("sample_every", 1, 10**9), ("checkpoint_every", 1, 10**9), ("log_every", 1, 10**9), ("n_critic", 1, 100),
    ("head_pool", 1, 10**5), ("head_resize_max", 0.35, 16.0),  # head_pool: 100,000 RGB 128 px fakes are 4.9 GB
    ("steps", 1, 10**9),  # 0 GAN steps gave a "complete" run of an untrained GAN
)  # fmt: skip

AUTO_ROTATION = 1.0  # the rotation weight auto chooses for colour photographs (Q4's lever study)


def _looks_stationary(data: Dataset) -> bool:
    return is_stationary(alignment(data.images[np.random.default_rng(0).permutation(len(data))[:MEMORY_BANK_MAX]]))


def resolve_auto(cfg: TrainConfig, data: Dataset) -> TrainConfig:
    """``cfg`` with its data-dependent defaults (None: auto) resolved, as chosen on development splits
    (docs/benchmarks.md, Q4 and Q2b):

    * ``rotation``: AUTO_ROTATION for colour images that are not textures (photographs have a way up), 0 for
      greyscale images and textures;
    * ``head_npr``: on for colour images (upsampling traces in photographs), off for greyscale ones (on digits
      the residual is mostly stroke edges, and it lost on MNIST's development split);
    * ``head_resize_max``: 3x for colour images (enlarged photographs were the head's weak spot), 2x for
      greyscale ones (3x did not help on MNIST's development split)."""
    colour = data.channels == 3
    if cfg.rotation is None:
        on = colour and not _looks_stationary(data)
        log.info("rotation task: %s (auto: %s)", "on" if on else "off",
                 "colour images with a way up" if on else "greyscale images or textures")  # fmt: skip
        cfg = replace(cfg, rotation=AUTO_ROTATION if on else 0.0)
    if cfg.head_npr is None:
        cfg = replace(cfg, head_npr=colour)
    if cfg.head_resize_max is None:
        cfg = replace(cfg, head_resize_max=RESIZE_MAX_COLOUR if colour else RESIZE_SCALE[1])
    return cfg


def warn_rotation_on_stationary(cfg: TrainConfig, data: Dataset) -> None:
    """A turned texture is just another normal texture: the rotation task means nothing there."""
    if cfg.rotation and _looks_stationary(data):
        log.warning("--rotation: these images look alike at every position (textures?); a turned image is "
                    "just another normal one, so the rotation task will not help. Consider --rotation 0")  # fmt: skip


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    return dev


@dataclass
class Networks:
    G: Generator
    G_ema: Generator
    D: Discriminator
    E: Encoder
    H: GeneratedHead | None = None  # the generated-image head, once trained


def build_head(cfg: TrainConfig) -> GeneratedHead:
    return GeneratedHead.build(
        cfg.size, cfg.channels, cfg.width, cfg.minibatch_std, cfg.head_spectral, cfg.head_npr, cfg.d_head
    )


def build_networks(cfg: TrainConfig) -> Networks:
    G = Generator(cfg.size, cfg.channels, cfg.z_dim, cfg.width)
    D = Discriminator(
        cfg.size, cfg.channels, cfg.width, cfg.spectral_norm, cfg.minibatch_std, bool(cfg.rotation), cfg.d_head
    )
    E = Encoder(cfg.size, cfg.channels, cfg.z_dim, cfg.width)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    return Networks(G, G_ema, D, E)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    path = RunDir(run_dir).checkpoint
    if not path.is_file():
        raise ModelFormatError(f"no checkpoint in {run_dir}: expected {path}. Train first, or drop --resume.")
    return load_tensors(path, "checkpoint")


def load_config(run_dir: str | Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(RunDir(run_dir).read_config())
    except ConfigError as e:
        raise ModelFormatError(f"{RunDir(run_dir).config}: {e}") from None
    except (TypeError, AttributeError) as e:  # not an object, an unknown argument...
        raise ModelFormatError(f"{RunDir(run_dir).config} is not a ganaudit run configuration ({e})") from None


def load_networks(run_dir: str | Path) -> tuple[TrainConfig, Networks, dict[str, Any]]:
    """Rebuild the networks of a run from its config and last checkpoint (all in eval mode)."""
    cfg = load_config(run_dir)
    ckpt = load_checkpoint(run_dir)
    nets = build_networks(cfg)
    try:
        for name in ("G", "G_ema", "D", "E"):
            getattr(nets, name).load_state_dict(ckpt[name])
            getattr(nets, name).eval()
        if "H" in ckpt:
            nets.H = build_head(cfg)
            nets.H.load_state_dict(ckpt["H"])
            nets.H.eval()
    except (KeyError, TypeError, RuntimeError) as e:  # a network missing, or weights of another shape
        raise ModelFormatError(
            f"the checkpoint of {run_dir} does not fit its config.json (edited, or from another run): "
            f"{str(e).strip().splitlines()[0][:300]}"
        ) from None
    return cfg, nets, ckpt


def check_head_crops(cfg: TrainConfig, data: Dataset) -> None:
    """The data set holds the head's crops as the config cuts them (K per image, or 2K with the scale view)."""
    if not cfg.generated_head:
        return
    pre = cfg.preprocess
    policy = data.crop_policy
    mismatch = policy is not None and tuple(policy) != (pre.native_crops, pre.scale_view)
    if mismatch or data.native is None or not pre.holds_crops(data.native.shape[1]):
        held = "none" if data.native is None else f"{data.native.shape[1]} per image"
        if policy is not None:
            held += f" (cut with native_crops={policy[0]}, scale_view={policy[1]})"
        raise ConfigError(
            f"the generated-image head needs {pre.native_crops} native-scale crops of each training image"
            f"{' (or twice as many with the scale view)' if pre.scale_view else ''}, and the data holds {held}: load it "
            f"with load_dataset(..., native_crops={pre.native_crops}, scale_view={pre.scale_view}), or train with "
            "--no-generated-head"
        )


def feature_diversity(D: Discriminator, fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean pairwise D-feature distance of fakes divided by that of reals (about 1 = healthy, << 1 = collapse)."""
    with torch.no_grad():
        f_fake, f_real = D(fake)[1], D(real)[1]
    return float(torch.pdist(f_fake).mean() / torch.pdist(f_real).mean().clamp_min(1e-8))


class Trainer:
    """Runs the adversarial phase then the encoder phase, one global step counter across both."""

    def __init__(
        self, cfg: TrainConfig, data: Dataset, run_dir: Path, device: torch.device, dist: ddp.Dist | None = None
    ) -> None:
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.dist = dist or ddp.Dist()
        self.x = torch.from_numpy(data.images).to(device)
        self.nets = build_networks(cfg)
        for m in (self.nets.G, self.nets.G_ema, self.nets.D, self.nets.E):
            m.to(device)
        # Across processes (torchrun): one DDP wrapper each, this rank's share of the batch from its shard.
        self.G_call, self.D_call, self.E_call = (ddp.caller(m, self.dist, device) for m in (self.nets.G, self.nets.D, self.nets.E))
        self.H_call: Callable[..., Any] | None = None
        self._kept_fakes: torch.Tensor | None = None  # the D step's generated batch, for the G step (reuse_fakes)
        self._buffers_synced = "gan"
        self.local_batch = ddp.local_batch(self.dist, cfg.batch_size)
        self.shard = ddp.ShardedBatches(len(self.x), self.dist, self.local_batch, cfg.seed) if self.dist.enabled else None
        if self.dist.enabled:  # the wrappers took rank 0's weights: the EMA copy starts from them too
            self.nets.G_ema.load_state_dict(self.nets.G.state_dict())
        self.opt_g = torch.optim.Adam(self.nets.G.parameters(), cfg.lr_g, betas=(0.0, 0.9))
        self.opt_d = torch.optim.Adam(self.nets.D.parameters(), cfg.lr_d, betas=(0.0, 0.9))
        self.opt_e = torch.optim.Adam(self.nets.E.parameters(), cfg.lr_e, betas=(0.5, 0.999))
        self.d_loss_fn, self.g_loss_fn = LOSSES[cfg.loss]
        self.augment_ops = parse_augment(cfg.augment)
        self.step = 0
        self.fixed_z = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device)
        self.native = data.native  # uint8 [N, k, S, S, C]: the head's crops of the training images
        check_head_crops(cfg, data)
        self.opt_h: torch.optim.Optimizer | None = None
        self.pool: np.ndarray | None = None
        self._prefetcher: ThreadPoolExecutor | None = None
        self._prefetched: tuple[int, Future[np.ndarray]] | None = None

    # --- state -------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        n = self.nets
        return {
            "step": self.step,
            "G": n.G.state_dict(),
            "G_ema": n.G_ema.state_dict(),
            "D": n.D.state_dict(),
            "E": n.E.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_e": self.opt_e.state_dict(),
            "rng": torch.get_rng_state(),
            **self._dist_state(),
            "config": asdict(self.cfg),
            "ganaudit_version": __version__,
            **(self._head_state() if n.H is not None and self.opt_h is not None else {}),
        }

    def _dist_state(self) -> dict[str, Any]:
        """Across processes: every rank's RNG state and the sampler position (a collective call)."""
        if not self.dist.enabled:
            return {}
        assert self.shard is not None
        return {"rng_ranks": ddp.gather(self.dist, torch.get_rng_state()), "batches_drawn": self.shard.drawn}

    def _head_state(self) -> dict[str, Any]:
        assert self.nets.H is not None and self.opt_h is not None
        return {"H": self.nets.H.state_dict(), "opt_h": self.opt_h.state_dict()}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        for name in ("G", "G_ema", "D", "E"):
            getattr(self.nets, name).load_state_dict(ckpt[name])
        for name in ("opt_g", "opt_d", "opt_e"):
            getattr(self, name).load_state_dict(ckpt[name])
        if "H" in ckpt:
            self.nets.H = build_head(self.cfg).to(self.device)
            self.nets.H.load_state_dict(ckpt["H"])
            self.opt_h = self._head_optimizer(self.nets.H)
            self.opt_h.load_state_dict(ckpt["opt_h"])
        torch.set_rng_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        if self.dist.enabled:
            ranks = ckpt.get("rng_ranks", [])
            if len(ranks) == self.dist.world:
                torch.set_rng_state(ranks[self.dist.rank])
            else:  # resumed with another number of processes: fresh, distinct streams per rank
                torch.manual_seed(self.cfg.seed + 1000 * self.step + self.dist.rank)
            self.shard.drawn = int(ckpt.get("batches_drawn", 0))  # type: ignore[union-attr]

    def checkpoint(self) -> None:
        state = self.state()  # on every rank: it gathers the ranks' RNG states
        if self.dist.is_main:
            save_checkpoint(RunDir(self.run_dir).checkpoint, state)

    # --- steps -------------------------------------------------------------------
    def batch(self) -> torch.Tensor:
        idx = self.shard.next() if self.shard is not None else torch.randint(len(self.x), (self.cfg.batch_size,))
        return self.x[idx.to(self.device)]

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim).to(self.device)

    def _sigma(self) -> float:
        """Instance-noise level, annealed linearly to 0 over the adversarial phase."""
        return self.cfg.instance_noise * max(0.0, 1 - self.step / max(1, self.cfg.steps))

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.augment_ops) if self.augment_ops else x

    def d_step(self, keep_fakes: bool = False) -> float:
        """One D update. ``keep_fakes``: G's batch is drawn with its graph and kept for the next G step."""
        cfg, G, D = self.cfg, self.nets.G, self.nets.D
        real = self._augment(self.batch())
        if keep_fakes:
            self._kept_fakes = self.G_call(self.noise(len(real)))
            fake = self._augment(self._kept_fakes.detach())
        else:
            with torch.no_grad():
                fake = self._augment(G(self.noise(len(real))))
        sigma = self._sigma()
        real_in = instance_noise(real, sigma).requires_grad_(cfg.r1 > 0)
        if cfg.rotation:
            real_logit, _, rot_logits = self.D_call(real_in, method="with_rotations")
        else:
            real_logit, _ = self.D_call(real_in)
        fake_logit, _ = self.D_call(instance_noise(fake, sigma))
        loss = self.d_loss_fn(real_logit, fake_logit)
        if cfg.rotation:
            loss = loss + cfg.rotation * F.cross_entropy(rot_logits, rotation_targets(len(real), self.device))
        if cfg.r1 > 0:
            loss = loss + 0.5 * cfg.r1 * r1_penalty(real_logit, real_in)
        if cfg.loss == "wgan-gp":
            loss = loss + cfg.gp * gradient_penalty(lambda t: D(t)[0], real, fake)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss.item()

    def g_step(self) -> float:
        D = self.nets.D
        D.requires_grad_(False)
        drawn, self._kept_fakes = self._kept_fakes, None
        if drawn is None:
            drawn = self.G_call(self.noise(self.local_batch))
        fake = instance_noise(self._augment(drawn), self._sigma())
        if self.cfg.rotation and self.cfg.rotation_g > 0:
            fake_logit, _, rot_logits = D.with_rotations(fake)
            rot_loss = F.cross_entropy(rot_logits, rotation_targets(len(fake), self.device))
            loss = self.g_loss_fn(fake_logit) + self.cfg.rotation_g * rot_loss
        else:
            loss = self.g_loss_fn(D(fake)[0])
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        D.requires_grad_(True)
        self._update_ema()
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema, G = self.nets.G_ema, self.nets.G
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))  # warm-up: early samples track G
        for p_ema, p in zip(ema.parameters(), G.parameters()):
            p_ema.lerp_(p, 1 - decay)
        for b_ema, b in zip(ema.buffers(), G.buffers()):
            b_ema.copy_(b)

    def e_step(self) -> float:
        G, D = self.nets.G_ema, self.nets.D
        x = self.batch()
        rec = G(self.E_call(x))
        _, f_x = D(x)
        _, f_rec = D(rec)
        loss = izif_loss(x, rec, f_x, f_rec, self.cfg.kappa)
        self.opt_e.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_e.step()
        return loss.item()

    # --- generated-image head ----------------------------------------------------
    def _head_optimizer(self, head: GeneratedHead) -> torch.optim.Optimizer:
        return torch.optim.Adam(head.parameters(), self.cfg.head_lr, betas=(0.5, 0.999))

    def save_snapshot(self) -> None:
        """Keep the generator of this moment: the head later trains on samples of every snapshot."""
        if not self.dist.is_main:
            return
        buf = io.BytesIO()
        torch.save(self.nets.G.state_dict(), buf)
        atomic_write(RunDir(self.run_dir).snapshot(self.step), buf.getvalue())

    def _head_ready(self) -> GeneratedHead:
        """Build the head from the trained D (first head step) and the fake pool (first step after any start)."""
        if self.nets.H is None:
            with torch.random.fork_rng(devices=[]):  # its own seed: the head phase depends only on the trained nets
                torch.manual_seed(self.cfg.seed + 3)
                self.nets.H = GeneratedHead.from_discriminator(
                    self.nets.D, self.cfg.head_spectral, self.cfg.head_npr
                ).to(self.device)
            self.opt_h = self._head_optimizer(self.nets.H)
        if self.H_call is None:
            self.H_call = ddp.caller(self.nets.H, self.dist, self.device)
        if self.pool is None:
            ddp.barrier(self.dist)  # rank 0's last generator snapshots are on disk
            src = PoolSources(
                [g.to(self.device) for g in load_snapshots(self.run_dir, self.nets.G)],
                self.nets.G_ema, self.nets.E, self.x.cpu().numpy(),
            )  # fmt: skip
            cfg, families = self.cfg, parse_families(self.cfg.head_aux)
            n_aux = round(cfg.head_pool * cfg.head_aux_share) if families else 0
            own = fake_pool(src, cfg.head_pool - n_aux, cfg.seed + 2, self.device)
            aux = aux_pool(self.run_dir, families, self.x, n_aux, cfg.head_aux_steps, cfg.seed)
            self.pool = np.concatenate([own, aux])
        self.nets.H.train()
        return self.nets.H

    def _head_batch(self, step: int) -> np.ndarray:
        """The crops of a head step: a batch of real and of generated images, augmented alike, one random native
        crop each, from the step's own random stream (so a resumed or prefetched batch is the same batch)."""
        cfg, native, pool = self.cfg, self.native, self.pool
        assert native is not None and pool is not None
        rank = [self.dist.rank] if self.dist.enabled else []
        rng = np.random.default_rng([cfg.seed, 7, step, *rank])
        n = self.local_batch
        reals = [native[i, k] for i, k in zip(rng.integers(len(native), size=n), rng.integers(native.shape[1], size=n))]
        fakes = [pool[i] for i in rng.integers(len(pool), size=n)]
        return training_crops(reals + fakes, cfg.preprocess, rng, cfg.head_resize_max)

    def _take_head_batch(self) -> np.ndarray:
        """This step's crops (made during the previous step when it was prefetched); starts the next step's."""
        pending, self._prefetched = self._prefetched, None
        crops = pending[1].result() if pending is not None and pending[0] == self.step else self._head_batch(self.step)
        if HEAD_PREFETCH and self.step + 1 < self.cfg.total_steps:
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="ganaudit-head-batches")
            self._prefetched = (self.step + 1, self._prefetcher.submit(self._head_batch, self.step + 1))
        return crops

    def close_prefetch(self) -> None:
        """Stop the head's prefetch thread (a batch being made is finished and dropped)."""
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
        self._prefetcher, self._prefetched = None, None

    def h_step(self) -> float:
        """One head step: binary cross-entropy of each head branch on this step's real and generated crops."""
        self._head_ready()
        assert self.opt_h is not None and self.H_call is not None
        n = self.local_batch
        x = torch.from_numpy(self._take_head_batch()).to(self.device)
        y = torch.cat([torch.zeros(n), torch.ones(n)]).to(self.device)
        logits = self.H_call(x, method="branch_logits")  # across processes: through the head's DDP wrapper
        loss = sum(F.binary_cross_entropy_with_logits(logit, y) for logit in logits) / len(logits)
        self.opt_h.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_h.step()
        return loss.item()

    # --- logging -----------------------------------------------------------------
    def write_samples(self) -> dict[str, float]:
        G, D = self.nets.G_ema, self.nets.D
        was_training = D.training
        D.eval()
        with torch.no_grad():
            grid = make_grid(G(self.fixed_z).cpu().numpy())
            fake = G(torch.randn(256, self.cfg.z_dim, generator=torch.Generator().manual_seed(7)).to(self.device))
            real = self.x[torch.randperm(len(self.x), generator=torch.Generator().manual_seed(7))[:256].to(self.device)]
        atomic_write(RunDir(self.run_dir).sample_grid(self.step), encode_png(grid))
        ratio = feature_diversity(D, fake, real)
        D.train(was_training)
        if ratio < MODE_COLLAPSE_RATIO:
            log.warning(
                "step %d: generated samples are %.2fx as diverse as real ones in D-feature space; "
                "this suggests mode collapse (try --loss hinge, --r1 or more data)",
                self.step,
                ratio,
            )
        return {"diversity_ratio": ratio}

    # --- main loop ---------------------------------------------------------------
    def _one_step(self) -> dict[str, float]:
        cfg, nets = self.cfg, self.nets
        if self.step < cfg.steps:
            last = cfg.n_critic - 1
            d_loss = sum(self.d_step(keep_fakes=cfg.reuse_fakes and i == last) for i in range(cfg.n_critic)) / cfg.n_critic
            return {"d_loss": d_loss, "g_loss": self.g_step()}
        if self._buffers_synced != self.phase(self.step + 1):  # frozen nets run on rank 0's running statistics
            ddp.sync_buffers(self.dist, nets.G, nets.G_ema, nets.D, nets.E)
            self._buffers_synced = self.phase(self.step + 1)
        nets.D.eval().requires_grad_(False)  # frozen: mbstd uses its running statistic
        if self.step < cfg.steps + cfg.encoder_steps:
            return {"e_loss": self.e_step()}
        nets.E.eval()
        return {"h_loss": self.h_step()}

    def phase(self, step: int) -> str:
        """The phase a (1-based, completed) step belongs to."""
        cfg = self.cfg
        return "gan" if step <= cfg.steps else "encoder" if step <= cfg.steps + cfg.encoder_steps else "head"

    def run(self, progress: bool = True, stop_at: int | None = None) -> None:
        """Train to ``total_steps``. Ctrl-C finishes the current step, saves a checkpoint, then raises.

        ``stop_at`` stops early (with a checkpoint) as an interruption would, without raising.
        """
        from tqdm import tqdm

        cfg, metrics_path = self.cfg, RunDir(self.run_dir).metrics
        for m in (self.nets.G, self.nets.D, self.nets.E):
            m.train()
        main = self.dist.is_main  # only rank 0 shows progress and writes files
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not (progress and main), unit="step",
                   dynamic_ncols=True)  # fmt: skip
        t0, s0 = time.perf_counter(), self.step
        opened = metrics_path.open("a") if main else contextlib.nullcontext()
        with deferred_sigint() as interrupted, opened as metrics, contextlib.ExitStack() as cleanup:
            cleanup.callback(self.close_prefetch)
            end = cfg.total_steps if stop_at is None else min(stop_at, cfg.total_steps)
            while self.step < end and not ddp.any_rank(self.dist, interrupted()):
                bar.set_description(PHASE_NAMES[self.phase(self.step + 1)])
                losses = self._one_step()
                self.step += 1
                if cfg.generated_head and self.step <= cfg.steps and self.step % snapshot_every(cfg.steps) == 0:
                    self.save_snapshot()
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
                record: dict[str, Any] = {}
                if main and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                    record.update(self.write_samples())
                if main and (record or self.step % cfg.log_every == 0 or self.step == cfg.total_steps):
                    rate = (self.step - s0) * cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
                    record = {"step": self.step, "phase": self.phase(self.step), **losses, **record,
                              "img_per_s": round(rate, 1)}  # fmt: skip
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if self.step % cfg.checkpoint_every == 0:
                    self.checkpoint()
        bar.close()
        self.checkpoint()
        if self.step < end:
            raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_sigint() -> Iterator[Callable[[], bool]]:
    """Turn SIGINT into a flag checked between steps, so a checkpoint is never taken mid-step."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit.is_set
        return
    previous = signal.signal(signal.SIGINT, lambda *_: hit.set())
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines past ``step`` (and any half-written line) before a resume."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write(path, "".join(k + "\n" for k in kept))


def prepare_run(
    cfg: TrainConfig, data: Dataset, run_dir: Path, data_options: dict[str, Any]
) -> Dataset:
    """Create a fresh run directory: split off validation, write config and provenance. Returns the train part."""
    run = RunDir(run_dir)
    if run.checkpoint.exists():
        raise ConfigError(f"{run_dir} already holds a training run: pass --resume to continue it, or pick another --out")
    check_head_crops(cfg, data)
    train_idx, val_idx = split_validation(len(data), cfg.val_fraction, cfg.seed)
    if len(train_idx) == 0:
        raise ConfigError(f"only {len(data)} image(s): too few to train on")
    train, val = data.subset(train_idx), data.subset(val_idx)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run.snapshots():  # from an attempt that died before its first checkpoint
        stale.unlink()
    run.write_validation(val.images, val.native if cfg.generated_head else None)
    run.write_memory_bank(train.images, cfg.seed)
    run_info = {
        "data": {**data.source, **data_options},
        "fingerprint": data.fingerprint(),
        "train_fingerprint": train.fingerprint(),
        "n_images": len(data),
        "n_train": len(train),
        "n_validation": len(val),
        "validation_ids": val.ids,
        "skipped": len(data.skipped),
        "ganaudit_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    run.write_info(run_info)
    run.write_config(asdict(cfg))
    run.metrics.unlink(missing_ok=True)
    return train


def check_same_data(data: Dataset, run_dir: Path) -> None:
    """Refuse data other than what the run was trained on (by fingerprint)."""
    info = RunDir(run_dir).read_info()
    if data.fingerprint() != info["fingerprint"]:
        raise ConfigError(
            f"the data differs from the data {run_dir} was trained on (fingerprint {data.fingerprint()} != "
            f"{info['fingerprint']}): resume with the same DATA and options"
        )


def resume_run(data: Dataset, run_dir: Path, write: bool = True) -> tuple[TrainConfig, Dataset, dict[str, Any]]:
    """Reload config and checkpoint of an interrupted run and check the data is the same.

    ``write=False`` (every rank but 0 across processes) leaves the run's files alone."""
    ckpt = load_checkpoint(run_dir)
    cfg = load_config(run_dir)
    check_same_data(data, run_dir)
    train_idx, _ = split_validation(len(data), cfg.val_fraction, cfg.seed)
    train = data.subset(train_idx)
    if not write:
        return cfg, train, ckpt
    run = RunDir(run_dir)
    truncate_metrics(run.metrics, int(ckpt["step"]))
    if not run.memory_bank.is_file():  # runs made before the kNN score kept no memory bank
        log.info("adding the memory bank (%s) to %s", MEMORY_BANK, run_dir)
        run.write_memory_bank(train.images, cfg.seed)
    return cfg, train, ckpt


def reset_head(run_dir: Path, head_steps: int | None, head_options: dict[str, Any] | None = None) -> None:
    """Rewind a run whose GAN and encoder phases are done to the start of its head phase, with ``head_steps``
    (None: the default) and ``head_options`` (other head_* settings), so that resuming trains a new
    generated-image head on the same G, D and E."""
    cfg, ckpt = load_config(run_dir), load_checkpoint(run_dir)
    if not cfg.generated_head:
        raise ConfigError(f"{run_dir} was trained without the generated-image head: there is no head to retrain")
    start = cfg.steps + cfg.encoder_steps
    if ckpt["step"] < start:
        raise ConfigError(
            f"{run_dir} is at step {ckpt['step']}, before its head phase (step {start}): finish it with --resume"
        )
    new_cfg = asdict(replace(cfg, head_steps=head_steps, **(head_options or {})))  # None: the default for the run's GAN steps
    ckpt = {k: v for k, v in ckpt.items() if k not in ("H", "opt_h")} | {"step": start, "config": new_cfg}
    run = RunDir(run_dir)
    save_checkpoint(run.checkpoint, ckpt)
    run.write_config(new_cfg)
    truncate_metrics(run.metrics, start)
    log.info("%s rewound to step %d: the head is retrained for %d steps", run_dir, start, new_cfg["head_steps"])


def train(
    cfg: TrainConfig,
    data: Dataset,
    run_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    data_options: dict[str, Any] | None = None,
    progress: bool = True,
    stop_at: int | None = None,
    retrain_head: bool = False,
) -> Path:
    """Train (or resume) a run. Returns the run directory. Raises KeyboardInterrupt after saving on Ctrl-C.

    ``retrain_head`` resumes a run after training a new generated-image head from its finished G, D and E
    (``cfg.head_steps`` steps); the head's initialisation is seeded, so the result is the head a fresh run
    with those settings would have trained.
    """
    run_dir = Path(run_dir)
    job, dev = ddp.init(pick_device(device))  # several processes under torchrun; otherwise a no-op
    ddp.local_batch(job, cfg.batch_size)  # refuse a batch that does not split before anything is written
    if retrain_head:
        check_same_data(data, run_dir)  # before anything is rewound
        options = {k: getattr(cfg, k) for k in HEAD_RETRAIN_OPTIONS}
        ddp.on_main(job, lambda: reset_head(run_dir, cfg.head_steps, options))
        resume = True
    if resume:
        ddp.on_main(job, lambda: resume_run(data, run_dir))  # rank 0 tidies the run's files first
        cfg, train_data, ckpt = resume_run(data, run_dir, write=False)
    else:
        if data.channels != cfg.channels:
            cfg = TrainConfig.from_dict({**asdict(cfg), "channels": data.channels})
        if job.is_main:
            warn_rotation_on_stationary(cfg, data)
        cfg = resolve_auto(cfg, data)
        torch.manual_seed(cfg.seed)
        ddp.on_main(job, lambda: prepare_run(cfg, data, run_dir, data_options or {}))
        train_data = data.subset(split_validation(len(data), cfg.val_fraction, cfg.seed)[0])
        ckpt = None
    try:
        trainer = Trainer(cfg, train_data, run_dir, dev, job)
        if ckpt is not None:
            trainer.load_state(ckpt)
        else:
            torch.manual_seed(cfg.seed + job.rank)  # rank 0 (and a single process) draws the seed's own stream
        if trainer.step >= cfg.total_steps:
            log.info("run %s is already complete (%d steps)", run_dir, trainer.step)
            return run_dir
        trainer.run(progress=progress, stop_at=stop_at)
        ddp.barrier(job)  # leave together: a rank that tears gloo down while another still talks to it aborts
    finally:
        ddp.finish(job)
    return run_dir


@torch.no_grad()
def sample(run_dir: str | Path, n: int = 64, seed: int = 0) -> np.ndarray:
    """Draw ``n`` images from a run's EMA generator: float32 NCHW in [-1, 1]."""
    cfg, nets, _ = load_networks(run_dir)
    z = torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(seed))
    return nets.G_ema(z).numpy()
