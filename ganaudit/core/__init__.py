"""The core layer: what every other layer stands on, with numpy and OpenCV only.

Untrusted-bytes decoding and preprocessing (``imaging``, the one preprocess of training and runtime), the model
spec and its schema (``spec``, ``spec_schema``), thresholds, the file walk (``files``), errors, atomic writes,
image grids, the alignment statistic (``layout``), the domain gate's statistics (``domain``) and the shipped
models (``shipped``). Imports nothing above it (tests/test_layers.py).
"""
