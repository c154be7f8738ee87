"""mfdask: distributed matrix-factorization recommenders as batch jobs on Dask."""

__version__ = "0.1.0"

from mfdask.models import ALS, BPR, SVD, WARP, FactorModel, load_model
from mfdask.tuning import TuneResult, tune

__all__ = [
    "ALS",
    "BPR",
    "SVD",
    "WARP",
    "FactorModel",
    "TuneResult",
    "__version__",
    "load_model",
    "tune",
]
