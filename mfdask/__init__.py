"""mfdask: distributed matrix-factorization recommenders as batch jobs on Dask."""

__version__ = "0.1.0"

from mfdask.models import ALS, SVD, FactorModel, load_model

__all__ = ["ALS", "SVD", "FactorModel", "__version__", "load_model"]
