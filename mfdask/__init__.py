"""mfdask: distributed matrix-factorization recommenders as batch jobs on Dask."""

__version__ = "0.1.0"

from mfdask.models import ALS, BPR, SVD, WARP, FactorModel, load_model

__all__ = ["ALS", "BPR", "SVD", "WARP", "FactorModel", "__version__", "load_model"]
