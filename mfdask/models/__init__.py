"""The estimators: SVD (explicit), ALS, BPR and WARP (implicit), on one base class."""

from mfdask.models.als import ALS
from mfdask.models.base import FactorModel, load_model

__all__ = ["ALS", "FactorModel", "load_model"]
