"""Operator tools around the cluster: Flower, queue depth, child processes, plots.

Owns :mod:`~crypto_ml.ops.flower` (starting and securing Flower, task labels),
:mod:`~crypto_ml.ops.queue_depth` (the autoscaler's metric),
:mod:`~crypto_ml.ops.processes` (children that cannot outlive us) and
:mod:`~crypto_ml.ops.plot` (``--plot``). May import :mod:`crypto_ml.core` and
:mod:`crypto_ml.models` only (plain data in, no manager or worker objects), so the
dispatcher can use them.
"""
