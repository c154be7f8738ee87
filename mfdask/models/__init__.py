"""The estimators: SVD (explicit), ALS, BPR and WARP (implicit), on one base class."""

from mfdask.models.als import ALS
from mfdask.models.base import FactorModel, load_model
from mfdask.models.svd import SVD

__all__ = ["ALS", "SVD", "FactorModel", "load_model"]
