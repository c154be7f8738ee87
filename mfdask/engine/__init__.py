"""Dask orchestration: clusters, blocks on workers, the fit loop, the ALS and DSGD drivers,
checkpoints, and top-k, fold-in and evaluation on the workers.

This package is the only one that imports ``dask.distributed``. It takes arrays, id maps
and plain settings, never a model: the models read themselves into those and call it
(``tests/test_layout.py`` checks that nothing here imports a model). ``trainer.py`` is the
one fit loop every model runs.
"""
