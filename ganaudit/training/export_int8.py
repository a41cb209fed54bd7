"""Export, int8: static quantisation of the exported graph, calibrated on the validation images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CALIB_BATCHES_HELD = 4


def quantize_int8(fp32: bytes, val: np.ndarray, val_crops: np.ndarray | None = None, rows: int = 32) -> bytes:
    """Static int8 quantization (QDQ), calibrated on the validation images (and their native crops), ``rows``
    images per call; the calibrator reduces its collected outputs every CALIB_BATCHES_HELD calls, so memory
    does not grow with the number of validation images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            feeds = []
            for i in range(0, len(val), rows):
                feed = {"image": val[i : i + rows]}
                if val_crops is not None:
                    feed["crops"] = val_crops[i : i + rows]
                feeds.append(feed)
            self.batches = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        quantize_static(
            str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            extra_options={"CalibMaxIntermediateOutputs": CALIB_BATCHES_HELD},
        )  # fmt: skip
        return dst.read_bytes()
