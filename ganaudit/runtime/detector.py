"""The torch-free runtime: load an exported detector with onnxruntime and turn images into Verdicts."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from collections.abc import Mapping, Set
from typing import Any, Iterable, Sequence, Union, get_args

import cv2
import numpy as np
import onnxruntime as ort

from ..core import domain
from . import evidence, reasons
from ..core.errors import GanauditError, ImageDecodeError, ModelFormatError
from ..core.imaging import DEFAULT_MAX_PIXELS, decode, native_crops, preprocess, shown
from ..core.shipped import resolve_model, shipped_models
from ..core.spec import METADATA_KEY, ModelSpec
from ..core.threads import session_options
from ..core.thresholds import apply_calibration, check_fpr, check_probability_threshold, check_threshold, percentile, threshold_from_quantiles

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]
IMAGE_TYPES = get_args(ImageInput)  # for isinstance
ANOMALY, GENERATED = "anomaly", "generated"
# Largest patch-distance matrix per onnxruntime call (see rows_per_call): 16 images of a 32 px model.
PATCH_MATRIX_BYTES = 64 * 2**20
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"  # onnxruntime's option


@dataclass
class Verdict:
    """The result for one image. Scores are None when the image could not be scored (see ``error``)."""

    source: str | None = None
    status: str = "ok"
    error: str | None = None
    width: int | None = None
    height: int | None = None
    anomaly_score: float | None = None
    anomaly_percentile: float | None = None
    anomaly_flag: bool | None = None
    anomaly_probability: float | None = None
    generated_score: float | None = None
    generated_flag: bool | None = None
    flagged: bool = False
    components: dict[str, float] = field(default_factory=dict)
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    # The domain gate (domain.py): None when the model has no gate or it is switched off. False: the
    # generated verdict abstains (generated_score and generated_flag are None) and anomaly_flag is True.
    in_domain: bool | None = None
    domain_score: float | None = None
    # Short sentences for a moderator: which head fired, scores against thresholds, the gate (reasons.py).
    reasons: list[str] = field(default_factory=list)
    # With include_map, for images flagged as generated: the generated head's evidence per window (heatmap.py).
    generated_map: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the maps are left out; encode them separately)."""
        return verdict_record(self, _DICT_FIELDS)


def finite_or_none(x: Any) -> Any:
    """A float that JSON can carry: NaN and infinities become None; anything else passes through."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


# The fields of a Verdict that a row can carry, in declaration order (the maps are images: encode them apart).
RECORD_FIELDS = tuple(f.name for f in fields(Verdict) if f.name not in ("anomaly_map", "generated_map"))
_DICT_FIELDS = RECORD_FIELDS


def verdict_record(v: Verdict, names: Sequence[str] = RECORD_FIELDS) -> dict[str, Any]:
    """The one conversion of a verdict into a row (scan results, service responses, ``Verdict.to_dict``): the
    fields ``names`` in that order, JSON-ready (non-finite floats become None); the maps are the caller's."""
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(v, name)
        kind = type(value)
        if kind is list:  # reasons
            out[name] = list(value)
        elif kind is dict:  # components
            out[name] = {k: finite_or_none(x) for k, x in value.items()}
        else:
            out[name] = finite_or_none(value)
    return out


@dataclass
class Prepared:
    """A decoded and preprocessed image, ready for ``Detector.score_prepared``."""

    tensor: np.ndarray
    width: int
    height: int
    source: str | None = None
    # Native-scale crops [K, C, S, S] for the generated-image head (None: the model has no head, or the
    # image is scored on ``tensor`` alone, which is exact for images no larger than the model size).
    crops: np.ndarray | None = None


# Where a threshold came from, as scan summaries say it (``Thresholds.how``).
SET_EXPLICITLY = "set with --{head}-threshold"
SET_BY_FPR = "at FPR {fpr:g} on the model's normal-validation scores (--fpr)"
SET_AT_LOAD = "set when the detector was loaded"
MODEL_DEFAULT = "model default: "


@dataclass(frozen=True)
class Thresholds:
    """The thresholds in force and, in ``how``, where each came from (by head; not part of equality)."""

    anomaly: float
    generated: float | None
    how: Mapping[str, str] = field(default_factory=dict, compare=False)

    def origin(self, head: str) -> str:
        return self.how.get(head, SET_AT_LOAD)


def _describe(source: Any) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    return None


def _read_model(model: str | os.PathLike | bytes) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    path = Path(model)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # name too long, NUL byte, ...
        is_file = False
    if not is_file:
        try:
            exists = path.exists()
        except (OSError, ValueError):
            exists = False
        if exists:
            raise ModelFormatError(f"{shown(str(path))} is not a model file (a folder, device or pipe)")
        shipped = ", ".join(shipped_models()) or "none installed"
        raise ModelFormatError(f"model file not found: {shown(str(path))} (shipped model names: {shipped})")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ModelFormatError(f"cannot read model file {shown(str(path))}: {e.strerror or e}") from None


def _check_input_shapes(session: ort.InferenceSession, spec: ModelSpec) -> None:
    """The graph's fixed input sizes agree with the spec's preprocessing (an image [N, C, S, S], crops
    [N, K, C, S, S]): a spec that lies about them would fail every batch instead of the load."""
    p = spec.preprocess
    want, ndim = (p.channels, p.size, p.size), {"image": 4, "crops": 5}
    for i in session.get_inputs():
        if i.name not in ndim:
            continue
        tail = tuple(i.shape[-3:])
        fixed = all(isinstance(d, int) for d in tail)
        if len(i.shape) != ndim[i.name] or (fixed and tail != want):
            raise ModelFormatError(
                f"model input {i.name!r} has shape {i.shape}, but its spec preprocesses to {p.channels} x {p.size} x "
                f"{p.size}: re-export the model rather than editing its metadata"
            )


def read_spec(session: ort.InferenceSession, origin: str) -> ModelSpec:
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ModelFormatError(
            f"{origin} is an ONNX model but not a ganaudit detector (no '{METADATA_KEY}' metadata); "
            "export one with `ganaudit export`"
        )
    return ModelSpec.from_json(meta[METADATA_KEY])


def rows_per_call(spec: ModelSpec, batch_size: int) -> int:
    """Images per onnxruntime call: ``batch_size``, capped for a model with a patch bank so that its distance
    matrix (one float per first-stage position and bank entry, per image) stays within PATCH_MATRIX_BYTES."""
    bank = int(spec.scoring.get("patch_bank_size", 0))
    if bank == 0:
        return batch_size
    positions = (spec.preprocess.size // 2) ** 2
    return max(1, min(batch_size, PATCH_MATRIX_BYTES // (positions * bank * 4)))


class Detector:
    """An exported ganaudit detector running on onnxruntime. Safe to share across threads.

    Parameters
    ----------
    session, spec
        Normally built by :meth:`Detector.load`.
    fpr
        Recompute the anomaly threshold at this false-positive rate on normal images.
    anomaly_threshold, generated_threshold
        Fixed thresholds on the raw anomaly score and on the generated probability.
    batch_size
        Images per onnxruntime call; fewer for a model with a patch bank, whose [positions x bank] distance
        matrix grows with the batch (see :func:`rows_per_call`).
    max_pixels
        Images with more pixels are refused before decoding.
    domain_gate
        Apply the model's domain gate (on by default): outside the training domain the generated verdict
        abstains and the image is reported as anomalous (see :mod:`ganaudit.core.domain`). False gives the
        generated verdict for every image.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        spec: ModelSpec,
        *,
        fpr: float | None = None,
        anomaly_threshold: float | None = None,
        generated_threshold: float | None = None,
        batch_size: int = 64,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        domain_gate: bool = True,
    ) -> None:
        self.session = session
        self.domain_gate = bool(domain_gate)
        self.spec = spec
        self.batch_size = max(1, int(batch_size))
        self.rows_per_call = rows_per_call(spec, self.batch_size)
        self.max_pixels = int(max_pixels)
        self.output_names = [o.name for o in session.get_outputs()]
        self.input_name = session.get_inputs()[0].name
        self.uses_crops = "crops" in spec.inputs
        self.crops_axis_free = any(i.name == "crops" and not isinstance(i.shape[1], int) for i in session.get_inputs())
        graph_inputs = [i.name for i in session.get_inputs()]
        missing = [n for n in ("anomaly_map", *spec.outputs) if n not in self.output_names] + [
            f"input {n}" for n in spec.inputs if n not in graph_inputs
        ]
        if missing:
            raise ModelFormatError(f"model graph lacks inputs/outputs named in its spec: {', '.join(missing)}")
        _check_input_shapes(session, spec)
        if self.uses_crops and spec.preprocess.native_crops < 1:
            raise ModelFormatError("model takes native-scale crops but its spec has preprocess.native_crops = 0")
        if spec.preprocess.scale_view and not (self.uses_crops and self.crops_axis_free):
            raise ModelFormatError("preprocess.scale_view needs a graph whose 'crops' input takes any number of crops")
        self.thresholds = self.resolve_thresholds(
            fpr=fpr, anomaly_threshold=anomaly_threshold, generated_threshold=generated_threshold
        )

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | bytes,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        fpr: float | None = None,
        anomaly_threshold: float | None = None,
        generated_threshold: float | None = None,
        batch_size: int = 64,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        domain_gate: bool = True,
    ) -> "Detector":
        """Load a detector from an ``.onnx`` path, a shipped model's name (e.g. ``"digits"``) or the file's bytes.
        Raises ModelFormatError on a bad file, TypeError for another kind of argument.

        ``threads`` is onnxruntime's intra-op thread count (default: one per available core); waiting threads
        never spin, so the detector shares its cores politely (:mod:`ganaudit.core.threads`)."""
        if isinstance(model, str) or (isinstance(model, os.PathLike) and not isinstance(model, bytes)):
            model = resolve_model(model)  # a shipped name unless a file of that name exists
        elif not isinstance(model, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"Detector.load takes a path, a shipped model's name or the model's bytes, not {type(model).__name__}"
            )
        origin = "model bytes" if isinstance(model, (bytes, bytearray, memoryview)) else os.fsdecode(model)
        data = _read_model(model)
        opts = session_options(threads)  # threads.py: intra-op threads, no spinning
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            with tempfile.TemporaryDirectory(prefix="ganaudit-model-") as empty:
                # A detector is one self-contained file. From bytes, onnxruntime would look for external data in
                # the current folder, where a hostile model could read any file into its weights: point it at
                # an empty folder instead.
                opts.add_session_config_entry(EXTERNAL_DATA_FOLDER, empty)
                session = ort.InferenceSession(data, opts, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            low = first.lower()
            if "external data" in low and "use external data" not in low:  # not ORT's advice for huge tensors
                raise ModelFormatError(
                    f"{origin} refers to external data files; a ganaudit detector is one self-contained .onnx file"
                ) from None
            raise ModelFormatError(f"{origin} is not a loadable ONNX model (truncated or corrupt?): {first}") from None
        return cls(
            session, read_spec(session, origin), fpr=fpr, anomaly_threshold=anomaly_threshold,
            generated_threshold=generated_threshold, batch_size=batch_size, max_pixels=max_pixels,
            domain_gate=domain_gate,
        )  # fmt: skip

    # --- metadata ----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def spec_hash(self) -> str:
        return self.spec.spec_hash

    @property
    def threads(self) -> int:
        """onnxruntime intra-op threads of this detector's session."""
        return int(self.session.get_session_options().intra_op_num_threads)

    @property
    def has_generated_head(self) -> bool:
        return GENERATED in self.spec.heads

    @property
    def gate_active(self) -> bool:
        """True when the generated verdict is gated: the model has a head and a gate, and it is switched on."""
        return self.domain_gate and self.has_generated_head and bool(self.spec.domain)

    def resolve_thresholds(
        self,
        *,
        fpr: float | None = None,
        anomaly_threshold: float | None = None,
        generated_threshold: float | None = None,
        base: Thresholds | None = None,
    ) -> Thresholds:
        """Thresholds in force: explicit values win, then ``fpr``, then ``base``, then the model's own."""
        spec = self.spec
        if base is None:
            base = self._model_thresholds()
            how = dict(base.how)
        else:  # inherited: the model's own stays so; anything else was chosen when the detector was loaded
            how = {h: o if o.startswith(MODEL_DEFAULT) else SET_AT_LOAD for h in (ANOMALY, GENERATED) for o in [base.origin(h)]}
        anomaly, generated = base.anomaly, base.generated
        if fpr is not None:
            check_fpr(fpr)
            if ANOMALY in spec.quantiles:
                anomaly, how[ANOMALY] = threshold_from_quantiles(spec.quantiles[ANOMALY], fpr), SET_BY_FPR.format(fpr=fpr)
            if GENERATED in spec.quantiles and self.has_generated_head:
                generated = threshold_from_quantiles(spec.quantiles[GENERATED], fpr)
                how[GENERATED] = SET_BY_FPR.format(fpr=fpr)
        if anomaly_threshold is not None:
            anomaly = check_threshold("anomaly_threshold", anomaly_threshold)
            how[ANOMALY] = SET_EXPLICITLY.format(head=ANOMALY)
        if generated_threshold is not None:
            generated = check_probability_threshold("generated_threshold", generated_threshold)
            how[GENERATED] = SET_EXPLICITLY.format(head=GENERATED)
        return Thresholds(anomaly, generated, how)

    def _model_thresholds(self) -> Thresholds:
        """The thresholds stored in the model, with how they were fitted."""
        values: dict[str, float | None] = {ANOMALY: float("inf"), GENERATED: None}
        how = {}
        for head in values:
            t = self.spec.thresholds.get(head)
            if t is not None:
                values[head] = t.value
                fitted = f"FPR {t.fpr:g} on {t.n_val} normal validation images" if t.fpr is not None else t.method
                how[head] = MODEL_DEFAULT + fitted
        return Thresholds(values[ANOMALY], values[GENERATED], how)

    # --- pipeline pieces ---------------------------------------------------------
    def prepare(self, source: ImageInput) -> Prepared:
        """Decode and preprocess one image. Raises ImageDecodeError."""
        image = decode(source, max_pixels=self.max_pixels)
        return self.prepare_decoded(image, _describe(source))

    def prepare_decoded(self, image: np.ndarray, source: str | None = None) -> Prepared:
        """Preprocess an already decoded image (and cut its native-scale crops when the model uses them).

        Raises ImageDecodeError for any image that cannot be preprocessed, so one image never aborts a batch.
        """
        h, w = image.shape[:2]
        try:
            crops = native_crops(image, self.spec.preprocess) if self.uses_crops else None
            return Prepared(preprocess(image, self.spec.preprocess), w, h, source, crops)
        except GanauditError:
            raise
        except (cv2.error, ValueError, MemoryError) as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ImageDecodeError(f"cannot preprocess this {w}x{h} image: {reason}") from None

    def run(self, batch: np.ndarray, crops: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Raw model outputs for a preprocessed NCHW float32 batch, in chunks of ``rows_per_call``.

        A model with a generated-image head also takes ``crops`` [N, K, C, S, S] (imaging.native_crops of each
        image); without them each image's ``batch`` tensor stands in for all K crops. Raises ValueError for an
        empty batch (there is nothing to run; :meth:`score_prepared` and :meth:`detect` take empty lists).
        """
        if len(batch) == 0:
            raise ValueError("Detector.run needs at least one image: the batch is empty")
        if self.uses_crops and crops is None:
            crops = self._tensor_as_crops(batch)
        if self.uses_crops:
            crops = self._unique_crops(crops)  # type: ignore[arg-type]
        chunks: list[list[np.ndarray]] = []
        step = self.rows_per_call
        for i in range(0, len(batch), step):
            feed = {self.input_name: np.ascontiguousarray(batch[i : i + step], dtype=np.float32)}
            if self.uses_crops:
                part = crops[i : i + step]  # type: ignore[index]
                feed["crops"] = np.ascontiguousarray(part, dtype=np.float32)
            chunks.append(self.session.run(self.output_names, feed))
        return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(self.output_names)}

    def _tensor_as_crops(self, batch: np.ndarray) -> np.ndarray:
        k = 1 if self.crops_axis_free else self.spec.preprocess.native_crops
        return np.repeat(np.asarray(batch, dtype=np.float32)[:, None], k, axis=1)

    def _unique_crops(self, crops: np.ndarray) -> np.ndarray:
        """One crop per image when every image's crops are copies of its first (an image no larger than the
        model's size: the head's mean over K copies is its value on one) and the graph takes any K."""
        if self.crops_axis_free and crops.shape[1] > 1 and np.array_equal(crops, np.broadcast_to(crops[:, :1], crops.shape)):
            return crops[:, :1]
        return crops

    def score_prepared(
        self, items: Sequence[Prepared], *, include_map: bool = False, thresholds: Thresholds | None = None
    ) -> list[Verdict]:
        """Score already-prepared images."""
        if not items:
            return []
        return self._verdicts(items, self._run_prepared(items), include_map, thresholds or self.thresholds)

    def _run_prepared(self, items: Sequence[Prepared]) -> dict[str, np.ndarray]:
        """Model outputs for prepared images; images with different numbers of crops (the scale view) are run
        in one group per count, and the outputs put back in the items' order."""
        batch = np.stack([p.tensor for p in items])
        if not self.uses_crops:
            return self.run(batch)
        k = self.spec.preprocess.native_crops
        crops = [p.crops if p.crops is not None else np.repeat(p.tensor[None], k, 0) for p in items]
        counts = sorted({len(c) for c in crops})
        if len(counts) == 1:
            return self.run(batch, np.stack(crops))
        out: dict[str, np.ndarray] = {}
        for count in counts:
            idx = np.array([i for i, c in enumerate(crops) if len(c) == count])
            part = self.run(batch[idx], np.stack([crops[i] for i in idx]))
            for name, values in part.items():
                out.setdefault(name, np.empty((len(items), *values.shape[1:]), values.dtype))[idx] = values
        return out

    def _verdicts(
        self, items: Sequence[Prepared], out: dict[str, np.ndarray], include_map: bool, thr: Thresholds
    ) -> list[Verdict]:
        spec = self.spec
        scores = out["anomaly_score"].astype(np.float64)
        pct = percentile(scores, spec.quantiles[ANOMALY]) if ANOMALY in spec.quantiles else None
        prob = apply_calibration(scores, spec.calibration[ANOMALY]) if ANOMALY in spec.calibration else None
        gen = None
        if self.has_generated_head and "generated_logit" in out:
            gen = apply_calibration(out["generated_logit"], spec.calibration.get(GENERATED))
        components = [n for n in self.output_names if n not in ("anomaly_score", "anomaly_map", "generated_logit")]
        dom = None
        if self.gate_active:
            dom = domain.domain_scores(scores, out, spec.scoring, spec.domain)
        verdicts = []
        for i, item in enumerate(items):
            a_flag = bool(scores[i] > thr.anomaly)
            g_score = None if gen is None else float(gen[i])
            in_domain = None if dom is None else bool(domain.inside(dom[i : i + 1], spec.domain)[0])
            if in_domain is False:  # abstain: no generated probability or flag; reported as anomalous
                g_score, a_flag = None, True
            g_flag = None if g_score is None or thr.generated is None else bool(g_score > thr.generated)
            verdicts.append(
                Verdict(
                    source=item.source,
                    width=item.width,
                    height=item.height,
                    anomaly_score=float(scores[i]),
                    anomaly_percentile=None if pct is None else round(float(pct[i]), 2),
                    anomaly_flag=a_flag,
                    anomaly_probability=None if prob is None else float(prob[i]),
                    generated_score=g_score,
                    generated_flag=g_flag,
                    flagged=a_flag or bool(g_flag),
                    components={n: float(out[n][i]) for n in components},
                    anomaly_map=out["anomaly_map"][i, 0] if include_map else None,
                    in_domain=in_domain,
                    domain_score=None if dom is None else float(dom[i]),
                )
            )
        for v, item in zip(verdicts, items):
            v.reasons = reasons.explain(v, thr, self)
            if include_map and v.generated_flag:
                v.generated_map = evidence.evidence_map(self, item)
        return verdicts

    # --- the one-call API --------------------------------------------------------
    def detect(
        self,
        x: ImageInput | Iterable[ImageInput],
        *,
        include_map: bool = False,
        fpr: float | None = None,
        anomaly_threshold: float | None = None,
        generated_threshold: float | None = None,
    ) -> Verdict | list[Verdict]:
        """Score one image (path, bytes or array) or a list of them.

        A single input returns one Verdict, a list returns a list in the same order. An image
        that cannot be decoded gives a Verdict with ``status="error"``; it never raises.
        """
        single = isinstance(x, IMAGE_TYPES)
        if not single and (isinstance(x, (Mapping, Set)) or not isinstance(x, Iterable)):
            raise TypeError(
                f"detect takes an image (a path, encoded bytes or a numpy array) or a list of them, not "
                f"{type(x).__name__}" + (" (pass list(d.values()) for a dict's images)" if isinstance(x, Mapping) else "")
            )
        sources = [x] if single else list(x)  # type: ignore[arg-type]
        thr = self.resolve_thresholds(
            fpr=fpr, anomaly_threshold=anomaly_threshold, generated_threshold=generated_threshold,
            base=self.thresholds,
        )  # fmt: skip
        results: list[Verdict | None] = [None] * len(sources)
        ok_idx, ok_items = [], []
        for i, src in enumerate(sources):
            if not isinstance(src, IMAGE_TYPES):  # e.g. None from a failed download: that item only
                results[i] = error_verdict(None, f"not an image: a {type(src).__name__}; {ACCEPTED}")
                continue
            try:
                ok_items.append(self.prepare(src))
                ok_idx.append(i)
            except GanauditError as e:
                results[i] = error_verdict(src, e)
        for i, v in zip(ok_idx, self.score_prepared(ok_items, include_map=include_map, thresholds=thr)):
            results[i] = v
        return results[0] if single else results  # type: ignore[return-value]


ACCEPTED = "pass a path, encoded bytes or a numpy array"


def error_verdict(source: Any, error: Exception | str) -> Verdict:
    return Verdict(source=_describe(source), status="error", error=str(error), reasons=[f"Not scored: {error}"])


__all__ = ["Detector", "Verdict", "Prepared", "Thresholds", "error_verdict", "ImageDecodeError"]
