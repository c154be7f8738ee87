"""The estimators: SVD (explicit), ALS, BPR and WARP (implicit), on one base class."""

from mfdask.models.als import ALS
from mfdask.models.base import FactorModel, load_model
from mfdask.models.bpr import BPR
from mfdask.models.svd import SVD
from mfdask.models.warp import WARP

__all__ = ["ALS", "BPR", "SVD", "WARP", "FactorModel", "load_model"]
