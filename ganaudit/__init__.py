"""ganaudit: flag anomalous and generated images with GAN-trained detectors exported to ONNX.

The runtime API (no torch needed)::

    from ganaudit import Detector
    det = Detector.load("detector.onnx")
    verdict = det.detect("image.png")
"""

__version__ = "0.1.0"

import os as _os

# OpenCV's own pixel ceiling, a second wall behind ganaudit's header check (imaging.decode). OpenCV reads it
# once, when cv2 is first imported, so it is set here, before any ganaudit module imports cv2. A value the
# user exported wins; images above it fail with a message naming the variable.
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "64000000")

from .core.errors import ConfigError, GanauditError, ImageDecodeError, ModelFormatError  # noqa: E402

__all__ = [
    "__version__",
    "Detector",
    "Verdict",
    "GanauditError",
    "ImageDecodeError",
    "ModelFormatError",
    "ConfigError",
]


def __getattr__(name: str):
    # Lazy: `import ganaudit` stays cheap for the CLI; Detector pulls in onnxruntime on first use.
    if name in ("Detector", "Verdict"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'ganaudit' has no attribute {name!r}")
