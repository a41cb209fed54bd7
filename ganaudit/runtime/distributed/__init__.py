"""Beyond one machine: ``ganaudit scan --engine ray`` (Ray Data, the ``[distributed]`` extra).

Training across processes lives in the training layer (:mod:`ganaudit.training.ddp`, torchrun); this package is
runtime layer: no torch.
"""
