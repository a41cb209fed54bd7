"""Audits: generators and generated image sets (fidelity, coverage, collapse, memorisation, class balance) and
detectors (per-group error rates, calibration).

Layer rules (docs/architecture.md): this package imports the runtime and core (numpy, OpenCV, onnxruntime) only;
torch is imported lazily where a training run's generator is sampled (the ``[train]`` extra).
"""
