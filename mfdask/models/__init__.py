"""The estimators: SVD (explicit), ALS, BPR and WARP (implicit), on one base class."""

from mfdask.models.base import FactorModel, load_model

__all__ = ["FactorModel", "load_model"]
