"""Model classes by name, for ``load_model`` and the command line."""

from __future__ import annotations

from mfdask.models.base import FactorModel


def model_classes() -> dict[str, type[FactorModel]]:
    """All models, keyed by lower-case name (``svd``, ``als``, ``bpr``, ``warp``)."""
    import mfdask.models as models

    return {
        name.lower(): getattr(models, name)
        for name in ("SVD", "ALS", "BPR", "WARP")
        if hasattr(models, name)
    }


def model_class(name: str) -> type[FactorModel]:
    """The model class called ``name`` (case-insensitive); ``ValueError`` lists the options."""
    classes = model_classes()
    try:
        return classes[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(classes)}") from None
