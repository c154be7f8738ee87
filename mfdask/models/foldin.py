"""Fold-in: factors for users from a history, with the fitted item side held fixed.

``model.recommend(user_ids, history=frame)`` and ``model.fold_in_users(frame)`` compute
each history user's factors from that history alone, the way the fit would have with
the items fixed, so a user who was not in the fit (or whose history changed since) can
be scored without refitting. Users in the history who are known to the model get the
new factors, computed from the given history only (implicit's ``recalculate_user``).

This module reads a model into a :class:`~mfdask.engine.foldin.FoldIn` (item arrays and
settings, :func:`fold_in_spec`) and is the client API; the histories, the solves and the
top-k on arrays are in :mod:`mfdask.engine.foldin`, shared with the batch job.

What each model solves (kernels in :mod:`mfdask.kernels.foldin`):

- ``ALS``: the exact normal equations of a user half-step,
  ``(YᵀY + Yᵤᵀ(Cᵤ - I)Yᵤ + λᵤI) xᵤ = YᵤᵀCᵤpᵤ`` with the model's confidence, preference
  and regularisation scaling, by Cholesky (:func:`mfdask.kernels.als.solve_rows_cholesky`,
  the training kernel) whatever the model's ``solver``: one solve is the exact optimum.
- ``SVD``: SGD on ``p_u`` and ``b_u`` with the fit's learning-rate schedule and number
  of epochs, starting from ``N(0, init_scale²)`` and ``b_u = 0``.
- ``BPR``: SGD on ``p_u`` over (positive, sampled negative) pairs, the fit's epochs and
  rates, negatives drawn from the items not in the history.
- ``WARP``: the fit's optimiser (Adagrad by default, or SGD) on ``p_u`` with the
  rank-weighted hinge, negatives sampled until a violator or ``max_sampled``.

The SGD fold-ins are seeded per user from ``(random_state, hash of the user id)``: a
user's factors are the same whichever batch, partition or worker folds it in.

History frames have ``user_id, item_id`` in original ids and ``rating`` (as the training
data had), or ``weight`` (event counts) where a model was fitted on events; without
either every row is a positive of value 1 (implicit models only). Ratings below the
model's ``positive_threshold`` are not positives (ALS, BPR, WARP) but count as seen:
they are never recommended nor drawn as negatives. Repeated ``(user, item)`` rows keep
the last rating, or sum their weights.

Errors. An item the model does not know is an :class:`~mfdask.models.base.UnknownIdError`
naming it; ``unknown_items="skip"`` drops those rows instead and reports their number
(``metrics`` of the result / a :class:`~mfdask.MfdaskWarning`). A user left without a
usable interaction (no row, or for implicit models no positive) raises
:class:`EmptyHistoryError` naming the users: there is no popularity fallback, since a
zero factor would score every item alike and silently hide the problem. The batch job
(:func:`recommend_history_all`) instead leaves such users out and counts them in its
manifest, so one bad user does not fail a job over millions.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mfdask._warnings import MfdaskWarning
from mfdask.data import schema
from mfdask.data.implicit import positive_cut
from mfdask.engine.foldin import UNKNOWN_ITEM_POLICIES as UNKNOWN_ITEM_POLICIES
from mfdask.engine.foldin import WEIGHT as WEIGHT
from mfdask.engine.foldin import FoldIn, History, build_history, score_top_k
from mfdask.engine.foldin import top_k_block as top_k_block
from mfdask.engine.foldin import user_seeds as user_seeds
from mfdask.errors import EmptyHistoryError
from mfdask.kernels.warp import MAX_RANK_WEIGHT

if TYPE_CHECKING:
    from mfdask.models.base import FactorModel


def _fit_epochs(model: FactorModel) -> list[dict[str, Any]]:
    """The epoch records of the model's first fit (what ``partial_fit`` added left out),
    up to the epoch it kept with early stopping."""
    records = [h for h in getattr(model, "history_", []) or [] if not h.get("update")]
    best = model.metrics_.get("best_iteration") if getattr(model, "metrics_", None) else None
    if isinstance(best, int) and best > 0:
        records = records[:best]
    return records


class _FixedRate(Protocol):
    """An SGD model without a per-epoch schedule method (SVD): one base rate."""

    learning_rate: float


def _sgd_rates(model: FactorModel, epochs: int | None) -> np.ndarray:
    """Per-epoch learning rates of the fit (from ``history_``, else the schedule)."""
    records = _fit_epochs(model)
    rates = [float(r["learning_rate"]) for r in records if "learning_rate" in r]
    if not rates:
        n = int(model._p("epochs") if "epochs" in model.get_params() else 1)
        if hasattr(model, "epoch_learning_rate"):
            rates = [model.epoch_learning_rate(e) for e in range(n)]
        else:
            lr = float(cast(_FixedRate, model).learning_rate)
            decay = float(getattr(model, "learning_rate_decay", 1.0))
            schedule = getattr(model, "learning_rate_schedule", "constant")
            rates = [lr * (decay**e if schedule == "decay" else 1.0) for e in range(n)]
    if epochs is not None:
        rates = (
            (rates * (epochs // len(rates) + 1))[:epochs] if epochs > len(rates) else rates[:epochs]
        )
    return np.asarray(rates, np.float64)


def _item_score_vectors(model: FactorModel) -> np.ndarray:
    """The item half of ``model._score_vectors()`` without touching the user side (which
    may live on the workers): ``q_i`` (ALS), ``[q_i, b_i, 1]`` (SVD), ``[q_i, b_i]`` (BPR,
    WARP with an item bias)."""
    q = np.asarray(model.item_factors_, dtype=np.float32)
    bias = getattr(model, "item_bias_", None)
    if bias is None:
        return q
    extra = [np.asarray(bias, np.float32)[:, None]]
    if not model.implicit:  # SVD: the user side is [p_u, 1, mu + b_u]
        extra.append(np.ones((len(q), 1), np.float32))
    return np.hstack([q, *extra])


def fold_in_spec(model: FactorModel, epochs: int | None = None) -> FoldIn:
    """The :class:`FoldIn` of a fitted ``model`` (ALS, SVD, BPR or WARP).

    ``epochs`` overrides the SGD models' number of passes (default: as many as the fit
    made, with its learning rates).
    """
    from mfdask.models.als import ALS, CONFIDENCE_OFFSETS
    from mfdask.models.bpr import BPR
    from mfdask.models.svd import SVD
    from mfdask.models.warp import WARP

    model._check_fitted()
    meta: dict[str, Any] = {
        "model_name": type(model).__name__,
        "threshold": positive_cut(
            getattr(model, "feedback_", schema.FEEDBACK_RATINGS), model.positive_threshold
        )
        if model.implicit
        else None,
    }
    if epochs is not None and (isinstance(epochs, bool) or int(epochs) < 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    item_ids = model.item_ids_.to_numpy()
    ivec = np.ascontiguousarray(_item_score_vectors(model), dtype=np.float32)
    if isinstance(model, ALS):
        weighting = model._p("weighting")
        if weighting == "bm25":
            raise ValueError(
                "fold-in of an ALS fitted with weighting='bm25' is not supported: its "
                "weights depend on the whole training data; refit, or fit with 'log'"
            )
        y64 = ivec.astype(np.float64)
        ridge = float(model._p("regularization")) * float(model.regularization_offset)
        return FoldIn(
            "als",
            item_ids,
            ivec,
            {
                "factors": model.factors,
                "regularization": float(model._p("regularization")),
                "count_power": model._spec().power(),
                "alpha": float(model._p("alpha")),
                "offset": CONFIDENCE_OFFSETS[model.confidence],
                "binary": weighting == "binary",
                "log_epsilon": float(model.epsilon) if weighting == "log" else None,
            },
            {"gram": y64.T @ y64 + ridge * np.eye(y64.shape[1])},
            **meta,
        )
    common = {
        "factors": model.factors,
        "random_state": model.random_state,
        "rates": _sgd_rates(model, epochs),
    }
    if isinstance(model, SVD):
        k = int(model.factors)
        return FoldIn(
            "svd",
            item_ids,
            ivec,
            {
                **common,
                "global_mean": float(model.global_mean_),
                "bias_rate_ratio": model._lr_b / float(model.learning_rate),
                "regularization": float(model.regularization),
                "bias_regularization": model._reg_b,
                "init_scale": model._member_init_scale,
                "members": model._members,
            },
            {
                "factors": np.ascontiguousarray(model.item_factors_[:, :k], dtype=np.float32),
                "bias": np.ascontiguousarray(model.item_bias_, dtype=np.float32),
            },
            **meta,
        )
    if isinstance(model, (BPR, WARP)):
        k = int(model.factors)
        settings = {
            **common,
            "user_dims": k,
            "regularization": float(model._regularization()[0]),
            "init_scale": float(model.init_scale) / np.sqrt(k),
        }
        if isinstance(model, WARP):
            settings.update(
                max_sampled=int(model._p("max_sampled")),
                adagrad=model.optimizer == "adagrad",
                max_rank_weight=float(getattr(model, "max_rank_weight", MAX_RANK_WEIGHT)),
            )
            return FoldIn("warp", item_ids, ivec, settings, **meta)
        return FoldIn("bpr", item_ids, ivec, settings, **meta)
    raise TypeError(f"fold-in is not implemented for {type(model).__name__}")


def _check_nonempty(spec: FoldIn, hist: History) -> None:
    empty = ~spec.usable(hist)
    if empty.any():
        names = list(hist.user_ids[empty][:10])
        what = (
            f"no positive (rating >= positive_threshold={spec.threshold:g})"
            if spec.needs_positive()
            else "no rating"
        )
        raise EmptyHistoryError(
            f"{int(empty.sum())} user(s) have {what} in the history to fold in from: "
            f"{names}; give each user at least one interaction (there is no popularity "
            "fallback), or leave such users out"
        )


def _report_skipped(hist: History, where: str) -> None:
    if hist.skipped:
        warnings.warn(
            f"{hist.skipped} {where} row(s) with an item unknown to the model were skipped",
            MfdaskWarning,
            stacklevel=4,
        )


# --------------------------------------------------------------------------- client API


def fold_in_users(
    model: FactorModel,
    frame: pd.DataFrame,
    *,
    unknown_items: str = "error",
    epochs: int | None = None,
) -> pd.DataFrame:
    """Factors of every user in ``frame`` from their history there (see the module doc).

    Returns
    -------
    DataFrame
        ``user_id`` (ascending), ``factors`` (one ``(factors,) float32`` array per row,
        the layout of ``user_factors.parquet``) and, for SVD, ``bias``. ``attrs["skipped"]``
        holds the number of rows dropped for an unknown item.
    """
    spec = fold_in_spec(model, epochs)
    hist = build_history(frame, spec, unknown_items=unknown_items)
    _report_skipped(hist, "history")
    if hist.n_rows == 0:
        raise EmptyHistoryError(
            "the history to fold in from has no rows"
            + (f" left after skipping {hist.skipped} with unknown items" if hist.skipped else "")
            + ": give user_id, item_id[, rating] rows of the users to fold in"
        )
    _check_nonempty(spec, hist)
    factors, bias = spec.model_factors(*spec.solve(hist))
    out = pd.DataFrame({schema.USER_ID: hist.user_ids, "factors": list(factors)})
    if bias is not None:
        out["bias"] = bias
    out.attrs["skipped"] = hist.skipped
    return out


def _ids_of(user_ids: Any) -> pd.Index:
    if isinstance(user_ids, (str, bytes)) or not hasattr(user_ids, "__iter__"):
        user_ids = [user_ids]
    if isinstance(user_ids, (np.ndarray, pd.Index, pd.Series)):
        return pd.Index(user_ids)
    return pd.Index(list(user_ids))


def recommend_with_history(
    model: FactorModel,
    user_ids: Any,
    n: int,
    history: pd.DataFrame,
    *,
    filter_seen: bool = True,
    items: Any = None,
    unknown_items: str = "error",
) -> pd.DataFrame:
    """:meth:`~mfdask.models.base.FactorModel.recommend` with ``history=``.

    Users with rows in ``history`` are folded in from those rows (known users too) and
    their history items are filtered; listed users without any row must be known to the
    model and are scored from their fitted factors and training items, as without
    ``history``.
    """
    model._check_fitted()
    spec = fold_in_spec(model)
    wanted = _ids_of(user_ids)
    if not isinstance(history, pd.DataFrame) or schema.USER_ID not in history.columns:
        build_history(history, spec)  # raises the error naming what is wrong
    hist_users = pd.Index(history[schema.USER_ID])
    if len(wanted) and len(hist_users) and hist_users.dtype != wanted.dtype:
        try:
            wanted = wanted.astype(hist_users.dtype)
        except (TypeError, ValueError):
            pass
    frame = history[hist_users.isin(wanted)]
    hist = build_history(frame, spec, unknown_items=unknown_items)
    _report_skipped(hist, "history")
    _check_nonempty(spec, hist)
    factors, bias = spec.solve(hist)
    folded_vec = spec.user_vectors(factors, bias)
    pos = pd.Index(hist.user_ids).get_indexer(wanted)
    fitted = np.flatnonzero(pos < 0)
    ivec = spec.item_vectors
    known = model.user_index(wanted[fitted]) if len(fitted) else np.empty(0, np.int64)
    d = folded_vec.shape[1]
    uvec = np.empty((len(wanted), d), np.float32)
    uvec[pos >= 0] = folded_vec[pos[pos >= 0]]
    if len(fitted):  # the user side is read only for listed users without a history
        uvec[fitted] = model._user_rows(known)  # only their rows, wherever they live
    exclude = None
    if filter_seen:
        # Row r of the exclusion: the history row of a folded user, else the training
        # items of a user scored from the fitted factors.
        seen = getattr(model, "seen_items_", None)
        fitted_seen = (
            sp.csr_matrix(seen[known], dtype=np.int8)
            if seen is not None
            else sp.csr_matrix((len(fitted), spec.n_items), dtype=np.int8)
        )
        stacked = [hist.seen(spec.n_items), fitted_seen]
        src = pos.copy()
        src[fitted] = hist.n_rows + np.arange(len(fitted))
        exclude = sp.vstack(stacked, format="csr")[src]
    candidates = None if items is None else np.unique(model.item_index(items))
    if candidates is not None:
        ivec = ivec[candidates]
        if exclude is not None:
            exclude = exclude[:, candidates]
    idx, val = score_top_k(uvec, np.ascontiguousarray(ivec, np.float32), exclude, n)
    keep = idx >= 0
    per_row = keep.sum(axis=1)
    i = idx[keep]
    if candidates is not None:
        i = candidates[i]
    ranks = np.broadcast_to(np.arange(1, idx.shape[1] + 1, dtype=np.int32), idx.shape)
    out = pd.DataFrame(
        {
            schema.USER_ID: np.repeat(wanted.to_numpy(), per_row),
            "rank": ranks[keep],
            schema.ITEM_ID: model.item_ids_.to_numpy()[i],
            "score": val[keep],
        }
    )
    out.attrs["skipped"] = hist.skipped
    return out
