"""The training layer (torch, scikit-learn, onnx: the ``[train]`` extra): networks, losses, the trainer, the
generated-image head, the scoring graph (``scoring.COMPONENTS``, the one table of score components), the
run-directory layout (``rundir``), calibration, and export (``export`` with ``export_graph``, ``export_fit``,
``export_int8``). Imports the core, and the runtime only to check the exported graph (tests/test_layers.py).
"""
