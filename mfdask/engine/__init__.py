"""Dask orchestration: clusters, blocks on workers, the ALS and DSGD drivers, checkpoints.

This package is the only one that imports ``dask.distributed``.
"""
