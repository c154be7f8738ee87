"""The estimator base class shared by SVD, ALS, BPR and WARP.

A fitted model is two factor matrices and the id maps that give their rows meaning:

- ``user_factors_`` ``(n_users, factors) float32`` and ``item_factors_``
  ``(n_items, factors) float32``, rows in dense-index order;
- ``user_ids_`` / ``item_ids_``: the original ids (position = dense index);
- ``seen_items_``: the training interactions as a ``(n_users, n_items)`` CSR, used to
  filter already-seen items out of recommendations.

Subclasses implement :meth:`_fit`, which describes the model's loss as an
:class:`~mfdask.engine.trainer.Objective` (initial state, block kernel, per-iteration
record, validation score, what to keep) and hands it to :meth:`_run_trainer`: the
:class:`~mfdask.engine.trainer.Trainer` owns the loop (checkpoints, recovery, early
stopping, progress). They may override :meth:`_score_vectors` when their score is more
than a dot product (SVD adds biases).
``__init__`` only stores its arguments; :meth:`fit` validates, starts from scratch and
returns ``self`` (the scikit-learn convention).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from mfdask._warnings import FitMetrics, HistoryRecord, warn_renamed
from mfdask.data import schema
from mfdask.data.dataset import Dataset, atomic_directory, open_dataset, write_json_atomic
from mfdask.data.training import TrainingData, as_id_type, as_training_data
from mfdask.engine.state import FactorBlocks, SeenBlocks
from mfdask.engine.warmup import warm_current_client
from mfdask.errors import ModelFileError, ModelMismatchError, NotFittedError, UnknownIdError
from mfdask.recommend import chunk_rows, top_k_of_scores

if TYPE_CHECKING:
    from mfdask.evaluate import RankingEvaluator

MODEL_FILE = "model.json"
USER_FACTORS_FILE = "user_factors.parquet"
ITEM_FACTORS_FILE = "item_factors.parquet"
SEEN_FILE = "seen_items.npz"
SEEN_DIR = "seen_items"
"""A distributed model's seen items: ``seen_items/block=B/part-0.parquet`` (user_idx, item_idx)."""
ITEMS_META_FILE = "items.parquet"
POSITIVES_FILE = "positives.npz"
"""Training positives per user and per item (implicit models: the popularity fallback)."""
ITEM_COUNTS_FILE = "item_counts.parquet"
"""``item_id, count``: training ratings per item (the support ``similar_items`` shrinks by)."""

EpochCallback = Callable[[dict[str, Any]], Any]
"""Called after each epoch/iteration with its record; returning ``False`` stops the fit."""


VALIDATION_METRICS = ("ndcg", "precision", "recall", "map", "hit_rate", "auc")
"""Keys of :func:`mfdask.evaluate.evaluate_ranking` a ranking model can track while it
trains (all higher-is-better)."""


def _check_validation_metric(value: Any) -> str:
    if value not in VALIDATION_METRICS:
        raise ValueError(
            f"validation_metric must be one of {list(VALIDATION_METRICS)} (a key of "
            f"evaluate_ranking, at cut-off validation_k), got {value!r}"
        )
    return str(value)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _write_factors(
    path: Path,
    id_name: str,
    ids: pd.Index,
    factors: np.ndarray,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    k = factors.shape[1]
    flat = pa.array(np.ascontiguousarray(factors, dtype=np.float32).ravel())
    columns = {
        id_name: pa.array(ids.to_numpy()),
        "factors": pa.FixedSizeListArray.from_arrays(flat, k),
    }
    for name, values in (extra or {}).items():
        columns[name] = pa.array(np.asarray(values, dtype=np.float32))
    pq.write_table(pa.table(columns), path)


def _read_factors(path: Path, id_name: str) -> tuple[pd.Index, np.ndarray, dict[str, np.ndarray]]:
    table = pq.read_table(path)
    col = table.column("factors").combine_chunks()
    k = col.type.list_size
    factors = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, k)
    ids = pd.Index(table.column(id_name).to_pandas(), name=id_name)
    extra = {
        name: table.column(name).to_numpy().astype(np.float32)
        for name in table.column_names
        if name not in (id_name, "factors")
    }
    return ids, factors, extra


def _as_matrix(held: Any) -> np.ndarray:
    return held.to_numpy() if isinstance(held, FactorBlocks) else held


class FactorModel:
    """Base of every mfdask model: recommend, similar items/users, save and load.

    Learned attributes (set by ``fit`` or ``load``): ``user_factors_``,
    ``item_factors_``, ``user_ids_``, ``item_ids_``, ``items_`` (titles/genres or None),
    ``seen_items_``, ``fingerprint_``, ``history_`` (one dict per epoch) and ``metrics_``.
    """

    model_name: ClassVar[str] = "base"
    implicit: ClassVar[bool] = True
    """True when the model learns from positives only (ALS, BPR, WARP)."""
    similar_items_shrinkage: ClassVar[float] = 10.0
    """Default ``shrinkage`` (β) of :meth:`similar_items`: cosine × n/(n + β)."""
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}
    renamed_params: ClassVar[dict[str, str]] = {}
    """Old constructor names -> new ones, accepted for one release with a
    ``DeprecationWarning`` (in the constructor, :meth:`set_params`, job files, saved
    models) and readable as attributes."""
    """The default search space of :func:`mfdask.tune`: parameter -> ``{"low", "high",
    "log"}`` (an integer range when both bounds are integers) or ``{"choices": [...]}``."""
    params_before: ClassVar[dict[str, Any]] = {}
    """Parameters added after models were first saved, with the value that reproduces a
    model saved without them (:func:`load_model` fills them in, not the new default)."""

    # Declarations only (no class attributes): each subclass's ``__init__`` stores its
    # parameters, ``fit``/``load`` the learned state; the shared code below reads them.
    # Parameters of every model:
    factors: int
    regularization: float | None  # None: resolved by the kind of data (ALS, BPR, WARP)
    random_state: int | None
    n_threads: int | None
    n_blocks: int | None
    show_progress: bool
    early_stopping_rounds: int | None
    checkpoint_dir: str | None
    checkpoint_every: int
    # Parameters of the implicit (ranking) models, ALS, BPR and WARP:
    positive_threshold: float
    validation_k: int
    validation_metric: str
    # Learned state (user_factors_, item_factors_ and seen_items_ are properties below):
    user_ids_: pd.Index
    item_ids_: pd.Index
    items_: pd.DataFrame | None
    fingerprint_: str
    history_: list[dict[str, Any]]
    metrics_: dict[str, Any]
    # Implicit models: training positives per user and per item (None when unknown, e.g.
    # a model saved before they were kept); users without one get the popular items.
    user_positives_: np.ndarray | None
    item_popularity_: np.ndarray | None
    feedback_: str
    params_: dict[str, Any]
    # During a fit: the placed validation ratings, and what a partial_fit updates.
    _validator: RankingEvaluator | None
    _update_of: dict[str, Any]

    # ------------------------------------------------------------------ defaults by feedback
    RATING_DEFAULTS: ClassVar[dict[str, Any]] = {}
    """Values of the parameters left None, for ratings (the defaults before events were
    supported: a fit on ratings is unchanged)."""
    EVENT_DEFAULTS: ClassVar[dict[str, Any]] = {}
    """Values of the parameters left None, for events (``user_id, item_id[, weight]``),
    chosen on a validation split of Last.fm-2k's training part (see the class docstring)."""

    def resolved_params(self, feedback: str | None = None) -> dict[str, Any]:
        """The parameters with every one left None filled in for ``feedback``.

        ``feedback`` is ``"ratings"`` or ``"events"``; default: what the model was
        fitted on (``feedback_``), else ratings. A parameter given explicitly is kept as
        given whatever the feedback. A fitted model keeps the result as ``params_``.
        """
        if feedback is None:
            feedback = getattr(self, "feedback_", schema.FEEDBACK_RATINGS)
        table = self.EVENT_DEFAULTS if feedback == schema.FEEDBACK_EVENTS else self.RATING_DEFAULTS
        params = self.get_params()
        for name, value in table.items():
            if params.get(name) is None:
                params[name] = value
        return params

    def _p(self, name: str) -> Any:
        """Parameter ``name`` as the fit uses it (resolved for the data's feedback)."""
        params = self.__dict__.get("params_")
        if params is None or name not in params:
            params = self.resolved_params()
        return params[name]

    def _set_feedback(self, feedback: str) -> None:
        self.feedback_ = feedback
        self.params_ = self.resolved_params(feedback)

    # ------------------------------------------------------------------ learned state
    # A side's factors are a matrix on the client, or FactorBlocks on the workers when
    # the side is large and the cluster outlives the fit (mfdask.engine.state). The
    # attributes read as matrices either way; reading a distributed side gathers it
    # (with a GatherWarning above the gather threshold), so the methods below ask for
    # rows (_user_rows) or hand the blocks to the engine instead.
    @property
    def user_factors_(self) -> np.ndarray:
        """``(n_users, factors) float32`` (gathered from the workers when held there)."""
        return _as_matrix(self._state("_user_factors"))

    @user_factors_.setter
    def user_factors_(self, value: Any) -> None:
        self.__dict__["_user_factors"] = value

    @property
    def item_factors_(self) -> np.ndarray:
        """``(n_items, factors) float32`` (gathered from the workers when held there)."""
        return _as_matrix(self._state("_item_factors"))

    @item_factors_.setter
    def item_factors_(self, value: Any) -> None:
        self.__dict__["_item_factors"] = value

    @property
    def seen_items_(self) -> Any:
        """``(n_users, n_items)`` bool CSR of the training items, or
        :class:`~mfdask.engine.state.SeenBlocks` on the workers (rows by ``[rows]``,
        whole by ``tocsr()``), or None when unknown."""
        return self.__dict__.get("_seen_items")

    @seen_items_.setter
    def seen_items_(self, value: Any) -> None:
        self.__dict__["_seen_items"] = value

    @property
    def item_counts_(self) -> np.ndarray | None:
        """``(n_items,) int64``: training ratings per item, or None when unknown.

        Counted from ``seen_items_`` (on the workers when it is held there) and kept
        until ``seen_items_`` changes (a ``partial_fit``); a loaded model has them from
        its ``item_counts.parquet``.
        """
        seen = self.seen_items_
        cached = self.__dict__.get("_item_counts")
        if cached is not None and (seen is None or cached[0] is seen):
            return cached[1]
        if seen is None:
            return None
        from mfdask.engine.topk import column_counts

        counts = column_counts(seen)
        self.__dict__["_item_counts"] = (seen, counts)
        return counts

    def _state(self, name: str) -> Any:
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(name.lstrip("_") + "_") from None

    @property
    def distributed(self) -> bool:
        """Whether any of the model's factors live as blocks on the workers."""
        return any(
            isinstance(self.__dict__.get(n), FactorBlocks)
            for n in ("_user_factors", "_item_factors")
        )

    def _user_rows(self, users: np.ndarray) -> np.ndarray:
        """Score vectors of dense ``users`` only: their factor rows from the blocks that
        hold them when the user side is distributed, with :meth:`_user_score_extra`
        appended, else rows of :meth:`_score_vectors`."""
        held = self.__dict__.get("_user_factors")
        if isinstance(held, FactorBlocks):
            rows = held.take(users)
            extra = self._user_score_extra(users)
            if extra is None:
                return rows
            extra = np.broadcast_to(np.asarray(extra, np.float32), (len(rows), extra.shape[1]))
            return np.hstack([rows, extra]).astype(np.float32, copy=False)
        return self._score_vectors()[0][users]

    def _user_score_blocks(self) -> FactorBlocks:
        """The user score vectors as blocks on the workers (the user side must be held
        there): the factor blocks themselves, or with :meth:`_user_score_extra`'s columns
        appended block by block on their workers."""
        held = self.__dict__["_user_factors"]
        if self._user_score_extra(np.empty(0, np.int64)) is None:
            return held
        n_blocks, n = held.n_blocks, held.n_rows

        def extra(b: int) -> np.ndarray:
            out = self._user_score_extra(np.arange(b, n, n_blocks, dtype=np.int64))
            assert out is not None
            return out

        return held.append_columns(extra)

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return [n for n, p in sig.parameters.items() if n != "self" and p.kind in plain]

    @classmethod
    def _new_param_names(cls, params: dict[str, Any], warn: bool = True) -> dict[str, Any]:
        """``params`` with the old names of :attr:`renamed_params` replaced by the new."""
        out = {}
        for name, value in params.items():
            new = cls.renamed_params.get(name)
            if new is not None and warn:
                warn_renamed(name, new, f"{cls.__name__} parameter ", stacklevel=4)
            out[new or name] = value
        return out

    def _take_renamed(self, renamed: dict[str, Any]) -> None:
        """Store constructor arguments given under an old name (``**renamed``), as the new."""
        for name, value in renamed.items():
            new = self.renamed_params.get(name)
            if new is None:
                raise TypeError(
                    f"{type(self).__name__}.__init__() got an unexpected keyword argument {name!r}"
                )
            warn_renamed(name, new, f"{type(self).__name__} parameter ", stacklevel=4)
            setattr(self, new, value)
            self.__dict__.setdefault("_given_names", {})[new] = name

    def _given_name(self, name: str) -> str:
        """The name the user gave parameter ``name`` under (old or new), for messages."""
        return str(self.__dict__.get("_given_names", {}).get(name, name))

    if not TYPE_CHECKING:  # old names read and write the new attribute (hidden from mypy)

        def __getattr__(self, name: str) -> Any:
            new = type(self).renamed_params.get(name)
            if new is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            warn_renamed(name, new, f"{type(self).__name__} attribute ")
            return getattr(self, new)

        def __setattr__(self, name: str, value: Any) -> None:
            new = type(self).renamed_params.get(name)
            if new is not None:
                warn_renamed(name, new, f"{type(self).__name__} attribute ")
                name = new
            object.__setattr__(self, name, value)

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, as stored (scikit-learn convention)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> FactorModel:
        """Set constructor arguments by name; unknown names raise ``ValueError``."""
        valid = set(self._param_names())
        for name, value in self._new_param_names(params).items():
            if name not in valid:
                raise ValueError(
                    f"{type(self).__name__} has no parameter {name!r}; valid: {sorted(valid)}"
                )
            setattr(self, name, value)
        return self

    def __getstate__(self) -> dict[str, Any]:
        # The placed blocks kept for partial_fit (futures of this client's cluster) and
        # the ratings they hold stay with this object: copies and pickles go without.
        state = self.__dict__.copy()
        for name in ("_kept_blocks", "_kept_ratings"):
            state.pop(name, None)
        return state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        train: Any,
        validation: Any = None,
        callback: EpochCallback | None = None,
        *,
        resume: bool = False,
    ) -> FactorModel:
        """Learn factors from ``train`` (a dataset path, pandas or Dask DataFrame).

        Parameters
        ----------
        train
            Ratings in original ids (see :func:`mfdask.data.training.as_training_data`).
        validation
            Optional held-out ratings in the same id space, for a per-epoch metric and
            early stopping where the model supports it.
        callback
            Called with each epoch's record (``epoch``, ``loss``, ``seconds``, ...);
            returning ``False`` stops training early. Iterations replayed after a lost
            worker or a resume are reported again.
        resume : bool
            Continue from the newest checkpoint in ``checkpoint_dir`` (written by an
            interrupted fit of the same model on the same data) and end with the model an
            uninterrupted fit would have produced; without a checkpoint there, start
            afresh. A checkpoint of another fit (other parameters or data) is refused
            with :class:`~mfdask.engine.checkpoint.CheckpointMismatchError`. Not a
            hyper-parameter: it says how to run this fit, not which model to learn.

        Returns
        -------
        self
        """
        self._validate_params()
        self._validate_checkpoint_params()
        self._checkpoints = self._make_checkpoints(resume)
        warm_current_client()  # the workers load the kernels while the ratings are read
        data = as_training_data(train)
        self._set_feedback(data.feedback)
        self.user_ids_ = data.user_ids
        self.item_ids_ = data.item_ids
        self.items_ = data.items
        self.fingerprint_ = data.fingerprint
        self.history_ = []
        self.metrics_ = FitMetrics()
        self.user_positives_ = self.item_popularity_ = None
        for name in ("_kept_blocks", "_kept_ratings", "_placed_added"):  # (incremental.KEPT)
            self.__dict__.pop(name, None)  # the last fit's placed blocks go
        started = time.perf_counter()
        try:
            self._fit(data, validation, callback)
        finally:
            self._validator = None  # placed validation blocks live only as long as the fit
        self.metrics_["fit_seconds"] = time.perf_counter() - started
        return self

    def partial_fit(
        self,
        train: Any,
        iterations: int | None = None,
        validation: Any = None,
        callback: EpochCallback | None = None,
    ) -> FactorModel:
        """Continue from the fitted factors on the updated training data.

        ``train`` is the *full* updated training set (the old ratings plus the new, as
        for a refit). New users and items are appended to the id maps with factors drawn
        as ``fit`` draws them; known ones start from their fitted factors; then
        ``iterations`` (default 3) iterations/epochs of the fit run. ``history_`` keeps
        the earlier records and appends the new ones marked ``"update": n``;
        ``metrics_["updates"]`` lists the updates. See :mod:`mfdask.models.incremental`.

        Raises
        ------
        NotFittedError
            The model was never fitted or loaded.
        """
        from mfdask.models.incremental import partial_fit

        return partial_fit(self, train, iterations, validation=validation, callback=callback)

    def _validate_params(self) -> None:
        """Check hyper-parameters; subclasses extend it. Raise ``ValueError`` naming them."""

    # ------------------------------------------------------------------ checkpoints
    CHECKPOINT_OPERATIONAL: ClassVar[tuple[str, ...]] = (
        "checkpoint_dir",
        "checkpoint_every",
        "n_threads",
        "show_progress",
    )
    """Parameters that say how a fit runs, not which model it learns: a checkpoint
    written under other values of these can be resumed."""

    def _validate_checkpoint_params(self) -> None:
        every = getattr(self, "checkpoint_every", 1)
        _check_positive_int("checkpoint_every", every)
        directory = getattr(self, "checkpoint_dir", None)
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise ValueError(f"checkpoint_dir must be a path or None, got {directory!r}")

    def _make_checkpoints(self, resume: bool) -> Any:
        from mfdask.engine.checkpoint import FitCheckpoints

        directory = getattr(self, "checkpoint_dir", None)
        return FitCheckpoints(
            None if directory is None else os.fspath(directory),
            getattr(self, "checkpoint_every", 1),
            resume=resume,
        )

    def _fit_identity(self, data: TrainingData, digest: str, n_blocks: int) -> dict[str, Any]:
        """What makes a checkpoint this fit's: model, parameters, data, block count."""
        # Resolved for the data's feedback: ALS() and ALS(regularization=0.1) on ratings
        # are the same fit.
        resolved = self.__dict__.get("params_") or self.resolved_params(data.feedback)
        params = {k: v for k, v in resolved.items() if k not in self.CHECKPOINT_OPERATIONAL}
        identity = {
            "class": type(self).__name__,
            "params": params,
            "fingerprint": data.fingerprint,
            "n_users": data.n_users,
            "n_items": data.n_items,
            "ratings_digest": digest,
            "n_blocks": int(n_blocks),
        }
        update = getattr(self, "_update_of", None)
        if update is not None:  # a partial_fit: which fitted model it continues
            identity["updated_from"] = update
        return identity

    def _resumable_blocks(self) -> int | None:
        """``n_blocks`` for the engine: the parameter, else the checkpoint's when resuming.

        Keeping the checkpoint's block count makes a resumed fit compute what the
        interrupted one would have, whatever the number of workers now.
        """
        if getattr(self, "n_blocks", None) is not None:
            return self.n_blocks
        start = self._checkpoints.peek()
        if start is not None:
            saved = start.state.get("identity", {}).get("n_blocks")
            if isinstance(saved, int):
                return saved
        return None

    def _run_trainer(self, objective: Any, iterations: int, unit: str, callback: Any) -> Any:
        """Fit through :class:`mfdask.engine.trainer.Trainer`: the loop every model shares.

        ``objective`` describes the model's loss (:class:`~mfdask.engine.trainer.Objective`);
        the records go to ``history_`` as they come. Returns the
        :class:`~mfdask.engine.trainer.FitResult` (after ``objective.finish`` kept it).
        """
        from mfdask.engine.trainer import Trainer, TrainSettings

        settings = TrainSettings(
            iterations=int(iterations),
            random_state=getattr(self, "random_state", None),
            early_stopping_rounds=getattr(self, "early_stopping_rounds", None),
            show_progress=bool(getattr(self, "show_progress", False)),
            unit=unit,
        )
        trainer = Trainer(settings, self._checkpoints, callback=callback, history=self.history_)
        result = trainer.fit(objective)
        if result.resumed_from is not None:
            self.metrics_["resumed_from"] = result.resumed_from
        if result.recoveries:
            self.metrics_["recoveries"] = result.recoveries
        return result

    def _fit(self, data: TrainingData, validation: Any, callback: EpochCallback | None) -> None:
        raise NotImplementedError

    def _record_epoch(self, record: dict[str, Any], callback: EpochCallback | None) -> bool:
        """Keep ``record`` in ``history_`` and call ``callback``; False means stop."""
        self.history_.append(HistoryRecord(record))
        if callback is not None and callback(record) is False:
            return False
        return True

    def _prediction_copy(self) -> FactorModel:
        """A shallow copy without what prediction does not need (seen items, history,
        titles, metrics, a placed validation): what evaluation ships to the workers."""
        light = copy.copy(self)
        light.seen_items_ = None
        light.history_ = []
        light.items_ = None
        light.metrics_ = FitMetrics()
        light._validator = None
        return light

    def _validation_score(self, validation: Any) -> float:
        """``validation_metric`` at ``validation_k`` on held-out ratings (ranking models).

        The held-out ratings are read and placed on the workers once per fit (a
        :class:`~mfdask.evaluate.RankingEvaluator`); each epoch only sends its factors.
        ``validation`` may itself be a placed ``RankingEvaluator`` (the tuner's, shared by
        every trial on the same training data).
        """
        from mfdask.evaluate import RankingEvaluator

        if isinstance(validation, RankingEvaluator):  # placed by the caller, shared by fits
            return float(validation.score(self)[self.validation_metric])
        evaluator = getattr(self, "_validator", None)
        if evaluator is None or evaluator.test is not validation:
            evaluator = RankingEvaluator(self, validation, k=self.validation_k)
            self._validator = evaluator
        return float(evaluator.score(self)[self.validation_metric])

    # ------------------------------------------------------------------ state
    def _check_fitted(self) -> None:
        # The held state, not the item_factors_ property: that gathers a distributed side.
        if self.__dict__.get("_item_factors") is None:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted: call fit() or load_model() first"
            )

    @property
    def n_users(self) -> int:
        self._check_fitted()
        return len(self.user_ids_)

    @property
    def n_items(self) -> int:
        self._check_fitted()
        return len(self.item_ids_)

    def user_index(self, user_ids: Iterable[Any]) -> np.ndarray:
        """Dense indices of original ``user_ids``; unknown ids raise :class:`UnknownIdError`."""
        self._check_fitted()
        return self._lookup(self.user_ids_, user_ids, "user")

    def item_index(self, item_ids: Iterable[Any]) -> np.ndarray:
        """Dense indices of original ``item_ids``; unknown ids raise :class:`UnknownIdError`."""
        self._check_fitted()
        return self._lookup(self.item_ids_, item_ids, "item")

    def _lookup(self, index: pd.Index, ids: Iterable[Any], kind: str) -> np.ndarray:
        self._check_fitted()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            ids = [ids]
        values = pd.Index(
            list(ids) if not isinstance(ids, (np.ndarray, pd.Index, pd.Series)) else ids
        )
        values = as_id_type(values, index, f"{kind} ids")
        pos = index.get_indexer(values)
        if (pos < 0).any():
            unknown = list(values[pos < 0][:10])
            raise UnknownIdError(
                f"unknown {kind} id(s) {unknown}"
                + (f" and {int((pos < 0).sum()) - 10} more" if (pos < 0).sum() > 10 else "")
                + f": the model knows {len(index)} {kind}s"
            )
        return pos.astype(np.int64)

    # ------------------------------------------------------------------ scoring
    def _score_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """User and item vectors whose dot product is the ranking score.

        Subclasses with biases return augmented vectors (e.g. ``[p_u, 1]`` and
        ``[q_i, b_i]``) so that one matrix product gives the full score.
        """
        return self.user_factors_, self.item_factors_

    def _user_block_copy(self, rows: np.ndarray) -> FactorModel:
        """A shallow copy whose users are the global ``rows`` (local indices
        ``0..len(rows) - 1``), without factors: set ``user_factors_`` to their rows to
        predict next to a user block. Subclasses slice their per-user arrays too."""
        light = copy.copy(self)
        light.__dict__["_user_factors"] = None
        light.user_ids_ = self.user_ids_[rows]
        for name in ("user_positives_",):
            values = self.__dict__.get(name)
            if values is not None:
                light.__dict__[name] = np.asarray(values)[rows]
        return light

    def _user_score_extra(self, users: np.ndarray) -> np.ndarray | None:
        """Columns that :meth:`_score_vectors` appends to the factor rows of ``users``
        (``(len(users), e)``, or ``(1, e)`` when the same for every user), or None when
        the score vector is the factor row itself. Lets a user side held on the workers
        be scored without gathering it."""
        return None

    def _item_score_vectors(self) -> np.ndarray:
        """The item half of :meth:`_score_vectors`, without reading the user side."""
        return self.item_factors_

    def _item_embeddings(self) -> np.ndarray:
        """Item vectors for cosine similarity (factors only, no bias)."""
        return self.item_factors_

    def _user_embeddings(self) -> np.ndarray:
        return self.user_factors_

    def predict_indices(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of dense-index pairs ``(users[j], items[j])``, ``(m,) float32``.

        The ranking score for implicit models; SVD overrides it with the clipped rating.
        """
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if self.distributed:
            uvec = self._user_rows(users)
            ivec = self._item_vectors()[items]
        else:
            u_all, i_all = self._score_vectors()
            uvec, ivec = u_all[users], i_all[items]
        return np.einsum("ij,ij->i", uvec, ivec).astype(np.float32)

    def _item_vectors(self) -> np.ndarray:
        """The candidate side of the score (every item, biases folded in)."""
        if self.distributed:
            return self._item_score_vectors()
        return self._score_vectors()[1]

    def _popularity_fallback(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(cold, share)``: which users have no training positive (``(n_users,) bool``)
        and each item's share of the training positives (``(n_items,) float32``), or None
        when the model has no such users or does not know its counts (explicit models,
        models saved before the counts were kept).

        A user without a positive learned nothing (ALS solves to zero factors, BPR and
        WARP never step them), so scoring ranks the catalogue by accident (ALS: items
        ``0..n-1``); those users are recommended the most popular unseen items instead,
        with the item's share of the positives as the score.
        """
        users = self.__dict__.get("user_positives_")
        items = self.__dict__.get("item_popularity_")
        if not type(self).implicit or users is None or items is None:
            return None
        cold = np.asarray(users) == 0
        if not cold.any():
            return None
        total = max(int(np.sum(items)), 1)
        return cold, (np.asarray(items, dtype=np.float64) / total).astype(np.float32)

    def recommend(
        self,
        user_ids: Any,
        n: int = 10,
        filter_seen: bool = True,
        items: Sequence[Any] | None = None,
        history: pd.DataFrame | None = None,
        unknown_items: str = "error",
    ) -> pd.DataFrame:
        """Top-``n`` items for each of ``user_ids``, in one vectorised pass.

        Parameters
        ----------
        user_ids
            One original user id or a sequence of them.
        n : int
            Items per user (fewer when not enough unseen items remain).
        filter_seen : bool
            Drop the user's training items.
        items : sequence, optional
            Restrict candidates to these original item ids.
        history : DataFrame, optional
            ``user_id, item_id[, rating or weight]``: fold the listed users in from these
            rows with the item factors fixed (users not in the fit too; known users use
            this history instead of their training data) and filter these items. Listed
            users without a row are scored as usual. See :mod:`mfdask.models.foldin`.
        unknown_items : {"error", "skip"}
            With ``history``: an item the model does not know raises
            :class:`UnknownIdError` naming it, or its rows are dropped (counted in a
            warning and in the result's ``attrs["skipped"]``).

        Returns
        -------
        DataFrame
            ``user_id, rank (1..n), item_id, score``, users in the order given. A user
            of the fit without a training positive (ALS, BPR, WARP: no rating >=
            ``positive_threshold``) gets the most popular unseen items, scored by their
            share of the training positives; ``attrs["popularity_fallback"]`` counts
            such users.
        """
        n = _check_positive_int("n", n)
        if history is not None:
            from mfdask.models.foldin import recommend_with_history

            return recommend_with_history(
                self,
                user_ids,
                n,
                history,
                filter_seen=filter_seen,
                items=items,
                unknown_items=unknown_items,
            )
        users = self.user_index(user_ids)
        return self._recommend_indices(users, n, filter_seen, items)

    def fold_in_users(
        self, frame: pd.DataFrame, unknown_items: str = "error", epochs: int | None = None
    ) -> pd.DataFrame:
        """Factors of every user in ``frame`` from their history, the items held fixed.

        ALS solves each user's normal equations exactly (the half-step of training);
        SVD, BPR and WARP take the fit's SGD (WARP: Adagrad) epochs on the user's row
        from a start seeded by the user id. See :mod:`mfdask.models.foldin`.

        Parameters
        ----------
        frame : DataFrame
            ``user_id, item_id[, rating or weight]`` in original ids.
        unknown_items : {"error", "skip"}
            An unknown item raises :class:`UnknownIdError` naming it, or is dropped
            and counted (``attrs["skipped"]``).
        epochs : int, optional
            SGD passes per user (default: as many as the fit made).

        Returns
        -------
        DataFrame
            ``user_id``, ``factors`` (a ``(factors,) float32`` array per user) and, for
            SVD, ``bias``.

        Raises
        ------
        mfdask.models.foldin.EmptyHistoryError
            A user without a usable interaction (implicit models: no positive).
        """
        from mfdask.models.foldin import fold_in_users

        return fold_in_users(self, frame, unknown_items=unknown_items, epochs=epochs)

    def _recommend_indices(
        self, users: np.ndarray, n: int, filter_seen: bool, items: Sequence[Any] | None
    ) -> pd.DataFrame:
        ivec = self._item_vectors()
        candidates = None if items is None else np.unique(self.item_index(items))
        if candidates is not None:
            ivec = ivec[candidates]
        step = chunk_rows(ivec.shape[0])
        seen = getattr(self, "seen_items_", None)
        fallback = self._popularity_fallback()
        n_fallback = 0
        out_u, out_i, out_s = [], [], []
        for start in range(0, len(users), step):
            chunk = users[start : start + step]
            scores = np.asarray(self._user_rows(chunk) @ ivec.T, dtype=np.float32)
            if fallback is not None:
                cold = fallback[0][chunk]
                if cold.any():  # no positive: rank by popularity (seen still filtered)
                    share = fallback[1] if candidates is None else fallback[1][candidates]
                    scores[cold] = share
                    n_fallback += int(cold.sum())
            exclude = None
            if filter_seen and seen is not None:
                exclude = seen[chunk]
                if candidates is not None:
                    exclude = exclude[:, candidates]
            idx, val = top_k_of_scores(scores, n, exclude)
            out_u.append(np.repeat(chunk, idx.shape[1]))
            out_i.append(idx.ravel())
            out_s.append(val.ravel())
        u = np.concatenate(out_u) if out_u else np.empty(0, np.int64)
        i = np.concatenate(out_i) if out_i else np.empty(0, np.int64)
        s = np.concatenate(out_s) if out_s else np.empty(0, np.float32)
        k = min(n, ivec.shape[0])
        rank = np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))
        keep = i >= 0
        if candidates is not None:
            i = np.where(keep, candidates[np.maximum(i, 0)], -1)
        out = pd.DataFrame(
            {
                schema.USER_ID: self.user_ids_.to_numpy()[u[keep]],
                "rank": rank[keep],
                schema.ITEM_ID: self.item_ids_.to_numpy()[i[keep]],
                "score": s[keep],
            }
        )
        out.attrs["popularity_fallback"] = n_fallback
        return out

    def similar_items(
        self, item_ids: Any, n: int = 10, shrinkage: float | None = None
    ) -> pd.DataFrame:
        """The ``n`` most similar items to each of ``item_ids`` by shrunk cosine of factors.

        The score of candidate ``j`` is ``cos(q_i, q_j) · n_j / (n_j + β)``, ``n_j`` its
        training ratings (:attr:`item_counts_`): the shrinkage of item-kNN methods
        (Koren 2008, sec. 2.2), which discounts the neighbours whose factors rest on a
        handful of ratings (their cosine is noise, often high). ``β = 10`` halves an item
        with 10 ratings and leaves one with 500 at 0.98 of its cosine.

        Parameters
        ----------
        item_ids
            One original item id or a sequence of them.
        n : int
        shrinkage : float, optional
            β; default the model's ``similar_items_shrinkage`` (10). 0 gives the plain
            cosine. Without training counts (a model saved without seen items) the
            default falls back to the plain cosine; an explicit β > 0 is an error.

        Returns
        -------
        DataFrame
            ``item_id, rank, similar_item_id, score``; the query item itself excluded.
        """
        n = _check_positive_int("n", n)
        idx = self.item_index(item_ids)
        return self._similar(
            idx,
            self._item_embeddings(),
            self.item_ids_,
            n,
            schema.ITEM_ID,
            "similar_item_id",
            weights=self._support_weights(shrinkage),
        )

    def _support_weights(self, shrinkage: float | None) -> np.ndarray | None:
        """``n_j / (n_j + β)`` per item, or None for the plain cosine."""
        explicit = shrinkage is not None
        beta = float(self.similar_items_shrinkage if shrinkage is None else shrinkage)
        if isinstance(shrinkage, bool) or not np.isfinite(beta) or beta < 0:
            raise ValueError(f"shrinkage must be a finite number >= 0, got {shrinkage!r}")
        if beta == 0:
            return None
        counts = self.item_counts_
        if counts is None:
            if explicit:
                raise ValueError(
                    f"this {type(self).__name__} has no training counts per item (no "
                    "seen_items_ and no item_counts.parquet), so shrinkage cannot apply: "
                    "pass shrinkage=0, or re-save the model from a fit"
                )
            return None
        counts = np.asarray(counts, dtype=np.float64)
        return (counts / (counts + beta)).astype(np.float32)

    def similar_users(self, user_ids: Any, n: int = 10) -> pd.DataFrame:
        """The ``n`` most similar users to each of ``user_ids`` by cosine of factors.

        When the user factors live on the workers each block is searched where it is
        (:mod:`mfdask.engine.neighbours`): only the queries' rows and ``n`` candidates
        per block and query travel, never the user matrix.
        """
        n = _check_positive_int("n", n)
        idx = self.user_index(user_ids)
        held = self.__dict__.get("_user_factors")
        if (
            isinstance(held, FactorBlocks)
            and type(self)._user_embeddings is FactorModel._user_embeddings
        ):
            from mfdask.engine.neighbours import nearest_rows

            found, scores = nearest_rows(held, idx, n)
            width = found.shape[1]
            keep = found.ravel() >= 0
            ids = self.user_ids_.to_numpy()
            return pd.DataFrame(
                {
                    schema.USER_ID: ids[np.repeat(idx, width)[keep]],
                    "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), len(idx))[keep],
                    "similar_user_id": ids[found.ravel()[keep]],
                    "score": scores.ravel()[keep],
                }
            )
        return self._similar(
            idx, self._user_embeddings(), self.user_ids_, n, schema.USER_ID, "similar_user_id"
        )

    def recommend_all(
        self,
        n: int = 10,
        path: str | os.PathLike[str] = "recommendations",
        *,
        seen: Dataset | str | os.PathLike[str] | None = None,
        users: Sequence[Any] | None = None,
        overwrite: bool = False,
        filter_seen: bool = True,
        **options: Any,
    ) -> Any:
        """Top-``n`` items for every user, computed on the workers, written as Parquet.

        The batch twin of :meth:`recommend` (same scores, same seen-item filter): see
        :mod:`mfdask.engine.topk` for the layout and :func:`mfdask.models.topk.recommend_all`
        for the options (``n_blocks``, ``chunk_cells``). Uses the default Dask client, or starts a
        ``LocalCluster`` for the call.

        Returns
        -------
        mfdask.engine.topk.TopKOutput
            Path, rows written, blocks and wall time.
        """
        from mfdask.models import topk

        return topk.recommend_all(
            self,
            n,
            path,
            seen=seen,
            users=users,
            overwrite=overwrite,
            filter_seen=filter_seen,
            **options,
        )

    def similar_items_all(
        self,
        n: int = 10,
        path: str | os.PathLike[str] = "similar_items",
        *,
        items: Sequence[Any] | None = None,
        overwrite: bool = False,
        shrinkage: float | None = None,
        **options: Any,
    ) -> Any:
        """The ``n`` most similar items to every item, computed on the workers, as Parquet.

        The batch twin of :meth:`similar_items` (same scores, same ``shrinkage``); see
        :func:`mfdask.models.topk.similar_items_all`.
        """
        from mfdask.models import topk

        return topk.similar_items_all(
            self,
            n,
            path,
            items=items,
            overwrite=overwrite,
            shrinkage=shrinkage,
            **options,
        )

    @staticmethod
    def _similar(
        query: np.ndarray,
        vectors: np.ndarray,
        ids: pd.Index,
        n: int,
        id_name: str,
        other_name: str,
        weights: np.ndarray | None = None,
    ) -> pd.DataFrame:
        norms = np.linalg.norm(vectors, axis=1)
        unit = vectors / np.where(norms > 0, norms, 1.0)[:, None]
        unit = unit.astype(np.float32)
        # Shrinkage scales each candidate's cosine by its weight: scale the candidates.
        candidates = unit if weights is None else unit * weights[:, None]
        step = chunk_rows(unit.shape[0])
        out_q, out_i, out_s = [], [], []
        for start in range(0, len(query), step):
            chunk = query[start : start + step]
            scores = unit[chunk] @ candidates.T
            self_mask = sp.csr_matrix(
                (np.ones(len(chunk)), (np.arange(len(chunk)), chunk)), shape=scores.shape
            )
            idx, val = top_k_of_scores(scores, n, self_mask)
            out_q.append(np.repeat(chunk, idx.shape[1]))
            out_i.append(idx.ravel())
            out_s.append(val.ravel())
        q = np.concatenate(out_q)
        i = np.concatenate(out_i)
        s = np.concatenate(out_s)
        k = min(n, unit.shape[0])
        rank = np.tile(np.arange(1, k + 1, dtype=np.int32), len(query))
        keep = i >= 0
        return pd.DataFrame(
            {
                id_name: ids.to_numpy()[q[keep]],
                "rank": rank[keep],
                other_name: ids.to_numpy()[i[keep]],
                "score": s[keep],
            }
        )

    # ------------------------------------------------------------------ persistence
    def _extra_user_columns(self) -> dict[str, np.ndarray]:
        return {}

    def _extra_item_columns(self) -> dict[str, np.ndarray]:
        return {}

    def _extra_state(self) -> dict[str, Any]:
        """JSON-serialisable learned scalars (e.g. SVD's global mean)."""
        return {}

    def _restore(
        self,
        user_extra: dict[str, np.ndarray],
        item_extra: dict[str, np.ndarray],
        state: dict[str, Any],
    ) -> None:
        """Restore what :meth:`_extra_user_columns` & co. saved."""

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the model to directory ``path`` atomically.

        Layout: ``model.json`` (class, hyper-parameters, id-map fingerprint, metrics,
        history, package version), ``user_factors.parquet`` and ``item_factors.parquet``
        (original id, ``factors`` as a fixed-size list, biases where the model has them),
        ``seen_items.npz``, ``items.parquet`` (titles) and ``positives.npz`` (training
        positives per user and per item, implicit models) when known.

        A side held on the workers is written by them, block by block, as a directory
        ``user_factors/block=B/part-0.parquet`` (same columns; ``seen_items/`` likewise
        with ``user_idx, item_idx``), so saving never gathers it; ``model.json``'s
        ``layout`` names the block directories. The path must then be on storage the
        workers share with the client.
        """
        from mfdask import __version__

        self._check_fitted()
        layout: dict[str, Any] = {}
        with atomic_directory(path, overwrite=overwrite) as tmp:
            for side, file, id_name, ids, extra in (
                (
                    "_user_factors",
                    USER_FACTORS_FILE,
                    schema.USER_ID,
                    self.user_ids_,
                    self._extra_user_columns(),
                ),
                (
                    "_item_factors",
                    ITEM_FACTORS_FILE,
                    schema.ITEM_ID,
                    self.item_ids_,
                    self._extra_item_columns(),
                ),
            ):
                held = self._state(side)
                if isinstance(held, FactorBlocks):  # each worker writes its own block
                    name = file.removesuffix(".parquet")
                    held.write_parquet(tmp / name, id_name, ids, extra)
                    layout[name] = {"blocks": held.n_blocks}
                else:
                    _write_factors(tmp / file, id_name, ids, held, extra)
            seen = self.seen_items_
            if isinstance(seen, SeenBlocks):
                seen.write_parquet(tmp / SEEN_DIR)
                layout[SEEN_DIR] = {"blocks": seen.n_blocks}
            elif seen is not None:
                sp.save_npz(tmp / SEEN_FILE, seen.tocsr(), compressed=False)
            if self.items_ is not None:
                self.items_.to_parquet(tmp / ITEMS_META_FILE, index=False)
            users_pos = self.__dict__.get("user_positives_")
            items_pos = self.__dict__.get("item_popularity_")
            if users_pos is not None and items_pos is not None:
                np.savez(tmp / POSITIVES_FILE, users=users_pos, items=items_pos)
            counts = self.item_counts_
            if counts is not None:
                pq.write_table(
                    pa.table(
                        {
                            schema.ITEM_ID: pa.array(self.item_ids_.to_numpy()),
                            "count": pa.array(np.asarray(counts, dtype=np.int64)),
                        }
                    ),
                    tmp / ITEM_COUNTS_FILE,
                )
            write_json_atomic(
                tmp / MODEL_FILE,
                {
                    "class": type(self).__name__,
                    "params": self.get_params(),
                    "feedback": getattr(self, "feedback_", schema.FEEDBACK_RATINGS),
                    "fingerprint": self.fingerprint_,
                    "n_users": self.n_users,
                    "n_items": self.n_items,
                    "factors": int(self._state("_item_factors").shape[1]),
                    "layout": layout,
                    "metrics": self.metrics_,
                    "history": self.history_,
                    "state": self._extra_state(),
                    "mfdask_version": __version__,
                },
            )
        return Path(path)

    def check_dataset(self, dataset: Dataset | str | os.PathLike[str]) -> None:
        """Raise :class:`ModelMismatchError` if ``dataset``'s id maps are not the model's."""
        ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
        if ds.fingerprint() != self.fingerprint_:
            raise ModelMismatchError(
                f"the model was trained on a dataset with id-map fingerprint "
                f"{self.fingerprint_}, but {ds.path} has {ds.fingerprint()}: "
                "apply it to a split of the dataset it was trained on, or retrain"
            )


def _read_side(
    root: Path, file: str, id_name: str, layout: dict[str, Any], n_rows: int, k: int
) -> tuple[pd.Index, np.ndarray | FactorBlocks, dict[str, np.ndarray]]:
    """One side of a saved model: a single file, or block directories written by workers.

    Blocks are loaded onto the workers of the caller's client when the side is larger
    than the gather threshold (and there is a client); otherwise read into the client.
    Only the ids (and per-row extras such as biases) are always read by the client.
    """
    name = file.removesuffix(".parquet")
    if name not in layout:
        return _read_factors(root / file, id_name)
    directory = root / name
    n_blocks = int(layout[name]["blocks"])
    tables = []
    for b in range(n_blocks):
        # Only the ids and the per-row extras: the factors column stays on disk here.
        part = directory / f"block={b}" / "part-0.parquet"
        columns = [c for c in pq.read_schema(part).names if c != "factors"]
        tables.append(pq.read_table(part, columns=columns))
    ids = np.empty(n_rows, dtype=tables[0].column(id_name).to_numpy().dtype)
    extra: dict[str, np.ndarray] = {}
    for b, t in enumerate(tables):
        ids[b::n_blocks] = t.column(id_name).to_numpy()
        for col in t.column_names:
            if col != id_name:
                extra.setdefault(col, np.empty(n_rows, np.float32))[b::n_blocks] = t.column(
                    col
                ).to_numpy()
    index = pd.Index(ids, name=id_name)
    client = _client_for_blocks(n_rows * k * 4)
    if client is not None:
        from mfdask.engine.cluster import worker_addresses

        blocks = FactorBlocks.read_parquet(
            client, directory, n_blocks, n_rows, k, worker_addresses(client)
        )
        return index, blocks, extra
    full = np.empty((n_rows, k), dtype=np.float32)
    for b in range(n_blocks):
        full[b::n_blocks] = _read_factors(directory / f"block={b}" / "part-0.parquet", id_name)[1]
    return index, full, extra


def _client_for_blocks(nbytes: int) -> Any:
    """The caller's client when a side of ``nbytes`` should be loaded onto its workers."""
    from mfdask.engine.cluster import _current_client
    from mfdask.engine.state import keeps_on_workers

    client = _current_client()
    return client if client is not None and keeps_on_workers(client, nbytes) else None


def _read_seen_blocks(
    directory: Path, n_blocks: int, n_users: int, n_items: int, users_on_workers: bool
) -> Any:
    """The seen-items pattern saved block by block: on the workers when the user factors
    are (each block next to its factor block, where ``recommend_all`` scores it) or when
    the pattern itself (``nnz`` int32 columns and an int64 row pointer) is larger than the
    gather threshold; read into a CSR on the client otherwise."""
    from mfdask.engine.cluster import _current_client

    client = _current_client() if users_on_workers else None
    if client is None:
        nnz = sum(
            pq.ParquetFile(directory / f"block={b}" / "part-0.parquet").metadata.num_rows
            for b in range(n_blocks)
        )
        client = _client_for_blocks(4 * nnz + 8 * (n_users + 1))
    if client is not None:
        from mfdask.engine.cluster import worker_addresses

        return SeenBlocks.read_parquet(
            client, directory, n_blocks, n_users, n_items, worker_addresses(client)
        )
    table = pq.read_table(directory, columns=["user_idx", "item_idx"])
    users = table.column("user_idx").to_numpy()
    items = table.column("item_idx").to_numpy()
    return sp.csr_matrix((np.ones(len(users), bool), (users, items)), shape=(n_users, n_items))


def load_model(
    path: str | os.PathLike[str], dataset: Dataset | str | os.PathLike[str] | None = None
) -> FactorModel:
    """Load a model saved with :meth:`FactorModel.save`.

    A side saved block by block (a distributed model) is loaded onto the workers of the
    caller's client when it is larger than the gather threshold
    (:mod:`mfdask.engine.state`), into the client otherwise. With ``dataset`` the
    model's id maps are checked against it first (:class:`ModelMismatchError` if they
    differ).
    """
    from mfdask.models.registry import model_class

    p = Path(path)
    meta_path = p / MODEL_FILE
    if not meta_path.is_file():
        raise ModelFileError(f"{p} is not a saved mfdask model: {MODEL_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
        cls = model_class(meta["class"])
        params = {**cls.params_before, **meta["params"]}
        model = cls(**cls._new_param_names(params, warn=False))
        layout = meta.get("layout", {})
        k = int(meta.get("factors", 0))
        model.user_ids_, model.user_factors_, uextra = _read_side(
            p, USER_FACTORS_FILE, schema.USER_ID, layout, meta["n_users"], k
        )
        model.item_ids_, model.item_factors_, iextra = _read_side(
            p, ITEM_FACTORS_FILE, schema.ITEM_ID, layout, meta["n_items"], k
        )
    except (KeyError, OSError, json.JSONDecodeError, pa.ArrowException) as exc:
        raise ModelFileError(
            f"saved model {p} is incomplete or corrupt: {exc!r}; it was not written by "
            "model.save() of this mfdask version, or was changed since: save the model again"
        ) from exc
    if (
        model._state("_user_factors").shape[0] != meta["n_users"]
        or model._state("_item_factors").shape[0] != meta["n_items"]
    ):
        raise ModelFileError(
            f"saved model {p} is corrupt: factor rows do not match model.json's counts "
            "(files from two saves mixed?); save the model again"
        )
    seen = p / SEEN_FILE
    if SEEN_DIR in layout:
        model.seen_items_ = _read_seen_blocks(
            p / SEEN_DIR,
            layout[SEEN_DIR]["blocks"],
            meta["n_users"],
            meta["n_items"],
            users_on_workers=isinstance(model._state("_user_factors"), FactorBlocks),
        )
    else:
        model.seen_items_ = sp.load_npz(seen).tocsr() if seen.exists() else None
    items = p / ITEMS_META_FILE
    model.items_ = pd.read_parquet(items) if items.exists() else None
    model.user_positives_ = model.item_popularity_ = None
    if (p / POSITIVES_FILE).exists():
        with np.load(p / POSITIVES_FILE) as counts:
            model.user_positives_, model.item_popularity_ = counts["users"], counts["items"]
    counts_file = p / ITEM_COUNTS_FILE
    if counts_file.exists():  # written in item order, like the factors
        counts = pq.read_table(counts_file, columns=["count"]).column("count").to_numpy()
        if len(counts) != meta["n_items"]:
            raise ModelFileError(
                f"saved model {p} is corrupt: {ITEM_COUNTS_FILE} has {len(counts)} rows"
            )
        model.__dict__["_item_counts"] = (model.seen_items_, counts.astype(np.int64))
    model.fingerprint_ = meta["fingerprint"]
    model._set_feedback(meta.get("feedback", schema.FEEDBACK_RATINGS))
    model.metrics_ = FitMetrics(meta.get("metrics", {}))
    model.history_ = [HistoryRecord(r) for r in meta.get("history", [])]
    model._restore(uextra, iextra, meta.get("state", {}))
    if dataset is not None:
        model.check_dataset(dataset)
    return model
