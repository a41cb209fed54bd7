"""The runtime layer (numpy, OpenCV, onnxruntime; never torch): ``detector`` (``Detector``, ``Verdict``), the
folder scan (``scan``, its writers ``scan_writers``, ``report``), and the explanations a verdict carries
(``reasons``, ``evidence``). Imports the core only (tests/test_layers.py).

``from ganaudit.runtime import Detector`` keeps working: the detector's public names are re-exported here.
"""

from .detector import ANOMALY, GENERATED, Detector, Prepared, Thresholds, Verdict

__all__ = ["Detector", "Verdict", "Thresholds", "Prepared", "ANOMALY", "GENERATED"]
