"""Fold-in: factors for users from a history, with the fitted item side held fixed.

``model.recommend(user_ids, history=frame)`` and ``model.fold_in_users(frame)`` compute
each history user's factors from that history alone, the way the fit would have with
the items fixed, so a user who was not in the fit (or whose history changed since) can
be scored without refitting. Users in the history who are known to the model get the
new factors, computed from the given history only (implicit's ``recalculate_user``).

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mfdask._warnings import MfdaskWarning
from mfdask.data import schema
from mfdask.data.hashing import hash_keys
from mfdask.data.implicit import positive_cut
from mfdask.data.training import InputError
from mfdask.errors import ALSNumericalError, EmptyHistoryError
from mfdask.kernels.als import solve_rows_cholesky
from mfdask.kernels.foldin import bpr_fold_in, svd_fold_in, warp_fold_in
from mfdask.kernels.warp import MAX_RANK_WEIGHT
from mfdask.recommend import DEFAULT_CHUNK_CELLS, chunk_rows, top_k_of_scores

if TYPE_CHECKING:
    from mfdask.models.base import FactorModel

WEIGHT = "weight"
"""Column of event counts in a history frame (events-trained models)."""

UNKNOWN_ITEM_POLICIES = ("error", "skip")

_STREAM_FOLD_IN = 0x464F4C44  # "FOLD": the hash stream of the per-user seeds


# --------------------------------------------------------------------------- histories


@dataclass
class History:
    """Histories as CSR rows, one row per user, items in the model's dense indices.

    Attributes
    ----------
    user_ids : (n_rows,) array
        Original user ids, ascending.
    indptr : (n_rows + 1,) int64
    indices : (nnz,) int32
        Dense item indices, ascending within a row.
    values : (nnz,) float32
        Rating or weight of each interaction.
    positive : (nnz,) bool
        Whether it is a positive for an implicit model.
    skipped : int
        Rows dropped because their item is unknown (``unknown_items="skip"``).
    """

    user_ids: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    positive: np.ndarray
    skipped: int = 0

    @property
    def n_rows(self) -> int:
        return len(self.user_ids)

    def seen(self, n_items: int) -> sp.csr_matrix:
        """Every history item per row (positive or not), as a CSR of ones."""
        return sp.csr_matrix(
            (np.ones(len(self.indices), np.int8), self.indices, self.indptr),
            shape=(self.n_rows, n_items),
        )

    def positives(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``indptr, indices, values`` of the positives only."""
        before = np.concatenate([[0], np.cumsum(self.positive, dtype=np.int64)])
        return (
            before[self.indptr],
            np.ascontiguousarray(self.indices[self.positive]),
            np.ascontiguousarray(self.values[self.positive]),
        )

    def select(self, rows: np.ndarray) -> History:
        """The histories of the rows where the boolean mask ``rows`` is set."""
        lengths = np.diff(self.indptr)
        keep = np.repeat(rows, lengths)
        indptr = np.zeros(int(rows.sum()) + 1, np.int64)
        np.cumsum(lengths[rows], out=indptr[1:])
        return History(
            user_ids=self.user_ids[rows],
            indptr=indptr,
            indices=self.indices[keep],
            values=self.values[keep],
            positive=self.positive[keep],
            skipped=self.skipped,
        )

    def n_positives(self) -> np.ndarray:
        before = np.concatenate([[0], np.cumsum(self.positive, dtype=np.int64)])
        return np.diff(before[self.indptr])


def _history_values(
    frame: pd.DataFrame, spec: FoldIn, where: str
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(values, positive, summed)`` of a history frame under the model's data rules."""
    n = len(frame)
    if schema.RATING in frame.columns:
        values = pd.to_numeric(frame[schema.RATING], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{where}: rating is missing or not a number in row {row} "
                f"(user_id={frame[schema.USER_ID].iloc[row]!r}, "
                f"item_id={frame[schema.ITEM_ID].iloc[row]!r})"
            )
        threshold = spec.threshold
        positive = values >= threshold if threshold is not None else np.ones(n, bool)
        return values.astype(np.float32), positive, False
    if spec.threshold is None:
        raise InputError(
            f"{where} has no {schema.RATING!r} column: {spec.model_name} folds users in "
            "from their ratings"
        )
    if WEIGHT in frame.columns:
        values = pd.to_numeric(frame[WEIGHT], errors="coerce").to_numpy(np.float64)
        if (~np.isfinite(values)).any() or (values < 0).any():
            row = int(np.flatnonzero(~(np.isfinite(values) & (values >= 0)))[0])
            raise InputError(f"{where}: weight must be a finite number >= 0 (row {row})")
        return values.astype(np.float32), values > 0, True
    return np.ones(n, np.float32), np.ones(n, bool), False


def build_history(
    frame: pd.DataFrame,
    spec: FoldIn,
    *,
    unknown_items: str = "error",
    where: str = "history",
) -> History:
    """The histories in ``frame`` as :class:`History` rows (vectorised, no per-user loop).

    Raises
    ------
    InputError
        Missing columns or a non-numeric rating/weight.
    UnknownIdError
        An item the model does not know, named (``unknown_items="error"``).
    """
    from mfdask.models.base import UnknownIdError

    if unknown_items not in UNKNOWN_ITEM_POLICIES:
        raise ValueError(
            f"unknown_items must be one of {list(UNKNOWN_ITEM_POLICIES)}, got {unknown_items!r}"
        )
    if not isinstance(frame, pd.DataFrame):
        raise InputError(
            f"{where} must be a pandas DataFrame with user_id, item_id[, rating] "
            f"(got a {type(frame).__name__}); for Parquet at scale use the batch job "
            "(`mfdask recommend MODEL OUTPUT --history PATH`)"
        )
    missing = [c for c in (schema.USER_ID, schema.ITEM_ID) if c not in frame.columns]
    if missing:
        raise InputError(
            f"{where} is missing column(s) {missing}; it has {list(frame.columns)} "
            "(expected user_id, item_id[, rating or weight] in original ids)"
        )
    if frame[schema.USER_ID].isna().any():
        raise InputError(f"{where} has missing user ids (NaN/None)")
    values, positive, summed = _history_values(frame, spec, where)
    items = pd.Index(frame[schema.ITEM_ID])
    model_items = spec.item_index
    if len(items) and items.dtype != model_items.dtype:
        try:
            items = items.astype(model_items.dtype)
        except (TypeError, ValueError) as exc:
            raise UnknownIdError(
                f"{where}: item ids {list(items[:5])} are not of the model's id type "
                f"{model_items.dtype}"
            ) from exc
    item = model_items.get_indexer(items)
    unknown = item < 0
    skipped = int(unknown.sum())
    if skipped and unknown_items == "error":
        names = list(pd.unique(items[unknown]))
        raise UnknownIdError(
            f"{where} has {skipped} row(s) with item id(s) the model does not know: "
            f"{names[:10]}"
            + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            + "; pass unknown_items='skip' to drop them (they are counted)"
        )
    keep = ~unknown
    # Users are listed before unknown rows go, so that a user left with nothing is an
    # empty row (reported), not silently absent.
    user_codes, user_ids = pd.factorize(frame[schema.USER_ID].to_numpy(), sort=True)
    user_codes = user_codes[keep]
    item = item[keep]
    values, positive = values[keep], positive[keep]
    # Sort by (user, item); duplicates of a pair keep the last row, or sum weights.
    order = np.lexsort((np.arange(len(item)), item, user_codes))
    u, i, v, p = user_codes[order], item[order], values[order], positive[order]
    last = np.ones(len(u), bool)
    if len(u):
        last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    if summed and not last.all():
        group = np.concatenate([[0], np.cumsum(last[:-1])])
        v = np.bincount(group, weights=v).astype(np.float32)
        p = v > 0
        u, i = u[last], i[last]
    else:
        u, i, v, p = u[last], i[last], v[last], p[last]
    indptr = np.zeros(len(user_ids) + 1, np.int64)
    np.cumsum(np.bincount(u, minlength=len(user_ids)), out=indptr[1:])
    return History(
        user_ids=np.asarray(user_ids),
        indptr=indptr,
        indices=np.ascontiguousarray(i, dtype=np.int32),
        values=np.ascontiguousarray(v, dtype=np.float32),
        positive=np.ascontiguousarray(p, dtype=bool),
        skipped=skipped,
    )


def user_seeds(random_state: Any, user_ids: np.ndarray) -> np.ndarray:
    """``(n,) uint64`` seeds of the SGD fold-ins: a hash of (random_state, user id)."""
    seed = 0 if random_state is None else int(random_state)
    keys = pd.util.hash_array(np.asarray(user_ids, dtype=object))
    return hash_keys(seed, _STREAM_FOLD_IN, keys)


# --------------------------------------------------------------------------- solvers


@dataclass(frozen=True)
class FoldIn:
    """Everything a worker needs to fold users into one model: item arrays, settings.

    Built once on the client by :func:`fold_in_spec` and shipped (broadcast) as a whole:
    it holds the item side only, never a user factor.

    Attributes
    ----------
    kind : {"als", "svd", "bpr", "warp"}
    model_name : str
        The model's class name (for messages).
    threshold : float or None
        ``positive_threshold`` of an implicit model; None for SVD.
    item_ids : (n_items,) array
        Original item ids (position = dense index).
    item_vectors : (n_items, d) float32
        The items' score vectors (as the model's ``_score_vectors()[1]``).
    settings : dict
        The model's hyper-parameters that the kernel needs.
    arrays : dict
        Extra item arrays (SVD: factors and biases apart; ALS: the Gram matrix).
    """

    kind: str
    item_ids: np.ndarray
    item_vectors: np.ndarray
    settings: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    model_name: str = ""
    threshold: float | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def item_index(self) -> pd.Index:
        return pd.Index(self.item_ids, name=schema.ITEM_ID)

    def needs_positive(self) -> bool:
        return self.threshold is not None

    def usable(self, hist: History) -> np.ndarray:
        """Rows with an interaction to fold in from (implicit models: a positive)."""
        counts = hist.n_positives() if self.needs_positive() else np.diff(hist.indptr)
        return counts > 0

    def solve(self, hist: History) -> tuple[np.ndarray, np.ndarray | None]:
        """``(factors (n_rows, k) float32, user bias (n_rows,) float32 or None)``."""
        s = self.settings
        n = hist.n_rows
        if self.kind == "als":
            indptr, indices, values = hist.positives()
            if s["binary"]:
                values = np.ones(len(indices), np.float32)
            elif s.get("log_epsilon") is not None:  # as the fit's weighting="log"
                values = np.log1p(values.astype(np.float64) / s["log_epsilon"]).astype(np.float32)
            y = self.item_vectors
            out = np.zeros((n, y.shape[1]), np.float32)
            failed = solve_rows_cholesky(
                indptr, indices, values, y, self.arrays["gram"], out,
                s["regularization"], s["count_scaled"], s["alpha"], s["offset"], 0, n,
            )  # fmt: skip
            if failed >= 0:
                raise ALSNumericalError(
                    f"folding in user {hist.user_ids[failed]!r} failed: the normal equations "
                    "are not positive definite (the history's weights make them indefinite); "
                    "raise the model's regularization or use confidence='paper'"
                )
            return out, None
        seeds = user_seeds(s["random_state"], hist.user_ids)
        rates = np.asarray(s["rates"], np.float64)
        if self.kind == "svd":
            q, b = self.arrays["factors"], self.arrays["bias"]
            out = np.empty((n, q.shape[1]), np.float32)
            bias = np.empty(n, np.float32)
            svd_fold_in(
                hist.indptr, hist.indices, hist.values, q, b, s["global_mean"], rates,
                rates * s["bias_rate_ratio"], s["regularization"], s["bias_regularization"],
                s["init_scale"], seeds, out, bias,
            )  # fmt: skip
            return out, bias
        y = self.item_vectors
        out = np.empty((n, y.shape[1]), np.float32)
        values = np.where(hist.positive, 1.0, 0.0).astype(np.float32)
        if self.kind == "bpr":
            bpr_fold_in(
                hist.indptr, hist.indices, values, 0.5, y, s["user_dims"], rates,
                s["regularization"], s["init_scale"], seeds, out,
            )  # fmt: skip
        else:
            warp_fold_in(
                hist.indptr, hist.indices, values, 0.5, y, s["user_dims"], rates,
                s["regularization"], s["max_sampled"], s["adagrad"], s["init_scale"],
                seeds, out, s.get("max_rank_weight", MAX_RANK_WEIGHT),
            )  # fmt: skip
        return out, None

    def user_vectors(self, factors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """Score vectors of folded users, the counterpart of :attr:`item_vectors`."""
        if self.kind == "svd":
            mu = self.settings["global_mean"]
            ones = np.ones((len(factors), 1), np.float32)
            return np.hstack([factors, ones, (mu + bias)[:, None]]).astype(np.float32)
        return factors

    def model_factors(
        self, factors: np.ndarray, bias: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's ``user_factors_`` layout (no bias column) and its user bias."""
        k = int(self.settings["factors"])
        return np.ascontiguousarray(factors[:, :k]), bias


def _fit_epochs(model: FactorModel) -> list[dict[str, Any]]:
    """The epoch records of the model's first fit (what ``partial_fit`` added left out),
    up to the epoch it kept with early stopping."""
    records = [h for h in getattr(model, "history_", []) or [] if not h.get("update")]
    best = model.metrics_.get("best_epoch") if getattr(model, "metrics_", None) else None
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
            decay = float(getattr(model, "lr_decay", 1.0))
            schedule = getattr(model, "lr_schedule", "constant")
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
                "count_scaled": model.regularization_scaling == "count",
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
                "init_scale": float(model.init_scale),
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


def score_top_k(
    uvec: np.ndarray,
    ivec: np.ndarray,
    exclude: sp.csr_matrix | None,
    n: int,
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` columns of ``uvec @ ivec.T`` per row, minus ``exclude``, chunk by chunk."""
    k = min(n, ivec.shape[0])
    idx = np.empty((len(uvec), k), np.int64)
    val = np.empty((len(uvec), k), np.float32)
    step = chunk_rows(ivec.shape[0], chunk_cells)
    for start in range(0, len(uvec), step):
        stop = min(start + step, len(uvec))
        scores = np.asarray(uvec[start:stop] @ ivec.T, dtype=np.float32)
        mask = exclude[start:stop] if exclude is not None else None
        idx[start:stop], val[start:stop] = top_k_of_scores(scores, n, mask)
    return idx, val


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


def top_k_block(
    spec: FoldIn,
    frame: pd.DataFrame,
    n: int,
    *,
    unknown_items: str = "error",
    filter_seen: bool = True,
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
    where: str = "history",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Fold in every user of ``frame`` (whole histories) and keep their top ``n`` items.

    The worker side of the batch job (:func:`mfdask.engine.foldin.recommend_history_all`):
    users without a usable interaction are left out and counted rather than raised.

    Returns
    -------
    DataFrame
        ``user_id, rank, item_id, score`` (original ids).
    dict
        ``users`` folded in, ``empty_users`` left out, ``skipped_rows`` (unknown items).
    """
    hist = build_history(frame, spec, unknown_items=unknown_items, where=where)
    usable = spec.usable(hist)
    empty = int((~usable).sum())
    if empty:
        hist = hist.select(usable)
    factors, bias = spec.solve(hist)
    uvec = spec.user_vectors(factors, bias)
    exclude = hist.seen(spec.n_items) if filter_seen else None
    idx, val = score_top_k(uvec, spec.item_vectors, exclude, n, chunk_cells)
    keep = idx >= 0
    ranks = np.broadcast_to(np.arange(1, idx.shape[1] + 1, dtype=np.int32), idx.shape)
    out = pd.DataFrame(
        {
            schema.USER_ID: np.repeat(hist.user_ids, keep.sum(axis=1)),
            "rank": ranks[keep],
            schema.ITEM_ID: spec.item_ids[idx[keep]],
            "score": val[keep],
        }
    )
    return out, {"users": hist.n_rows, "empty_users": empty, "skipped_rows": hist.skipped}
