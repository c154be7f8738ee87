"""What BPR and WARP share: pairwise ranking by SGD on the DSGD engine.

Both learn from positives only (``rating >= positive_threshold``) by stepping on
(user, positive, negative) triples whose negative is drawn from the item block the
worker holds (see :mod:`mfdask.engine.dsgd` and :mod:`mfdask.kernels.sampling`). This
module holds what they share around the engine: initial factors, the learning-rate
schedule, the objective the :class:`~mfdask.engine.trainer.Trainer` runs (per-epoch
records, validation), the optional item-bias column, and saving it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from mfdask.data.implicit import check_threshold, positive_cut
from mfdask.data.training import LocalRatings, TrainingData
from mfdask.engine.dsgd import DSGD, Drawn, EpochReport
from mfdask.engine.trainer import FitResult, Objective, State
from mfdask.models.base import (
    EpochCallback,
    FactorModel,
    _check_positive_int,
    _check_validation_metric,
)
from mfdask.models.incremental import block_extension, keep_blocks, keeps_blocks
from mfdask.models.sgd_state import (
    column_vector,
    columns,
    dsgd_placement,
    initial_dsgd_state,
)

WEIGHTINGS = ("binary", "log")
"""How BPR and WARP use an event's weight: not at all, or as a weighted step."""

BIAS_COLUMN = "bias"
"""Name of the item-bias column in ``item_factors.parquet``."""


def _check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class PairwiseModel(FactorModel):
    """Base of :class:`~mfdask.models.bpr.BPR` and :class:`~mfdask.models.warp.WARP`.

    Subclasses define ``__init__`` (storing their parameters), :meth:`_make_kernel`
    and :meth:`_epoch_record`.
    """

    implicit: ClassVar[bool] = True
    weightings: ClassVar[tuple[str, ...]] = WEIGHTINGS
    _threshold: float
    _step_scale: float
    progress_stats: ClassVar[tuple[str, ...]] = ("objective", "auc")

    # Parameters both subclasses store (declarations only; see FactorModel):
    epochs: int | None
    learning_rate: float | None
    learning_rate_decay: float | None
    item_regularization: float | None
    negative_regularization: float | None
    use_bias: bool | None
    init_scale: float
    weighting: str | None
    # Learned:
    item_bias_: np.ndarray | None

    # ------------------------------------------------------------------ parameters
    def _validate_params(self) -> None:
        _check_positive_int("factors", self.factors)
        _check_positive_int("validation_k", self.validation_k)
        _check_validation_metric(self.validation_metric)
        for name in ("n_threads", "n_blocks", "early_stopping_rounds", "epochs"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if (
            self.learning_rate is not None
            and _check_nonnegative("learning_rate", self.learning_rate) == 0
        ):
            raise ValueError("learning_rate must be > 0")
        if self.weighting is not None and self.weighting not in self.weightings:
            raise ValueError(
                f"weighting must be one of {list(self.weightings)} or None, got {self.weighting!r}"
            )
        if self.learning_rate_decay is not None:
            _check_nonnegative("learning_rate_decay", self.learning_rate_decay)
        if self.use_bias is not None and not isinstance(self.use_bias, (bool, np.bool_)):
            raise ValueError(f"use_bias must be True, False or None, got {self.use_bias!r}")
        _check_nonnegative("init_scale", self.init_scale)
        for name in ("regularization", "item_regularization", "negative_regularization"):
            if getattr(self, name) is not None:
                _check_nonnegative(name, getattr(self, name))
        check_threshold(self.positive_threshold)

    def _regularization(self) -> tuple[float, float, float]:
        """λ_u, λ_i, λ_j: item and negative default to the user's ``regularization``."""
        reg = float(self._p("regularization"))
        reg_pos = reg if self.item_regularization is None else float(self.item_regularization)
        reg_neg = reg_pos if self.negative_regularization is None else self.negative_regularization
        return reg, reg_pos, float(reg_neg)

    def epoch_learning_rate(self, epoch: int) -> float:
        """The step size of epoch ``epoch`` (0-based): ``learning_rate / (1 + decay · epoch)``.

        An inverse-time schedule (Robbins-Monro conditions hold for any decay > 0);
        ``learning_rate_decay = 0`` keeps it constant.
        """
        decay = float(self._p("learning_rate_decay"))
        return float(self._p("learning_rate")) / (1.0 + decay * epoch)

    # ------------------------------------------------------------------ fitting
    def _initial_state(
        self, data: TrainingData, rng: np.random.Generator | None = None
    ) -> tuple[dict, dict]:
        """``N(0, (init_scale / √k)²)`` factors by global row; the bias column 1 / 0.

        Drawn on the client row by row of the full matrices, so the start does not
        depend on how rows are blocked. The scale keeps initial scores ``p·q`` of order
        ``init_scale²`` whatever ``k``. ``rng`` defaults to one seeded by ``random_state``.
        """
        if rng is None:
            rng = np.random.default_rng(self.random_state)
        k = int(self.factors)
        extra = 1 if self._p("use_bias") else 0
        std = float(self.init_scale) / np.sqrt(k)
        users = np.zeros((data.n_users, k + extra), dtype=np.float32)
        items = np.zeros((data.n_items, k + extra), dtype=np.float32)
        users[:, :k] = rng.standard_normal((data.n_users, k), dtype=np.float32) * std
        items[:, :k] = rng.standard_normal((data.n_items, k), dtype=np.float32) * std
        if extra:
            users[:, k] = 1.0  # fixed: x_ui = p_u·q_i + 1·b_i
        return {"factors": users}, {"factors": items}

    def _drawn_state(self, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The start of a large fit as :class:`~mfdask.engine.dsgd.Drawn` specs, each
        block drawn on its worker by global row: the distribution of
        :meth:`_initial_state` (other floats), the bias column 1 / 0."""
        k = int(self.factors)
        extra = 1 if self._p("use_bias") else 0
        std = float(self.init_scale) / np.sqrt(k)
        user = {"factors": Drawn(k + extra, normal=k, scale=std, seed=seed, fill=1.0)}
        item = {"factors": Drawn(k + extra, normal=k, scale=std, seed=seed + 1, fill=0.0)}
        return user, item

    def _make_kernel(self, epoch: int, learning_rate: float) -> Any:
        raise NotImplementedError

    def _epoch_record(self, report: EpochReport, learning_rate: float) -> dict[str, Any]:
        raise NotImplementedError

    def _fit(self, data: TrainingData, validation: Any, callback: EpochCallback | None) -> None:
        objective = PairwiseObjective(self, data, validation)
        self._run_trainer(objective, self._p("epochs"), "epoch", callback)

    def _set_factors(self, user: dict[str, Any], item: dict[str, Any]) -> None:
        """Keep the engine's state: matrices, or blocks left on the workers (cut there)."""
        k = int(self.factors)
        self.user_factors_ = columns(user["factors"], 0, k)
        self.item_factors_ = columns(item["factors"], 0, k)
        if self._p("use_bias"):
            self.item_bias_ = column_vector(item["factors"], k)
        else:
            self.item_bias_ = None

    # ------------------------------------------------------------------ scoring
    def _score_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``[p_u, 1]`` and ``[q_i, b_i]`` with a bias, so one product gives the score."""
        users = self.user_factors_
        extra = self._user_score_extra(np.empty(0, np.int64))
        if extra is not None:
            users = np.hstack([users, np.ones((users.shape[0], 1), dtype=np.float32)])
        return users, self._item_score_vectors()

    def _user_score_extra(self, users: np.ndarray) -> np.ndarray | None:
        """The constant 1 that multiplies the item bias (None without a bias)."""
        return None if getattr(self, "item_bias_", None) is None else np.ones((1, 1), np.float32)

    def _item_score_vectors(self) -> np.ndarray:
        bias = getattr(self, "item_bias_", None)
        if bias is None:
            return self.item_factors_
        return np.hstack([self.item_factors_, bias[:, None].astype(np.float32)])

    # ------------------------------------------------------------------ persistence
    def _extra_item_columns(self) -> dict[str, np.ndarray]:
        bias = getattr(self, "item_bias_", None)
        return {} if bias is None else {BIAS_COLUMN: bias}

    def _restore(
        self,
        user_extra: dict[str, np.ndarray],
        item_extra: dict[str, np.ndarray],
        state: dict[str, Any],
    ) -> None:
        self.item_bias_ = item_extra.get(BIAS_COLUMN)


class PairwiseObjective(Objective):
    """A BPR or WARP fit for :class:`mfdask.engine.trainer.Trainer`.

    Checkpoint state: factors (and WARP's Adagrad sums), the best epoch's, the seed and
    the history (the learning rate is a function of the epoch, so epochs may be
    submitted ahead). Every random stream is derived from ``(seed, epoch, block)``, so
    with one thread per cell a resumed or recovered fit equals an uninterrupted one
    bitwise.
    """

    progress_keys = ("objective", "auc")
    finite_keys = ("objective",)

    def __init__(self, model: PairwiseModel, data: TrainingData, validation: Any) -> None:
        self.model, self.data, self.validation = model, data, validation
        self.name = type(model).__name__
        self.validation_key = None if validation is None else model.validation_metric
        self.advice = (
            f"lower learning_rate (now {model._p('learning_rate')}) or raise regularization "
            f"(now {model._p('regularization')})"
        )

    def build(self, client: Any) -> DSGD:
        m, data = self.model, self.data
        m._threshold = positive_cut(data.feedback, check_threshold(m.positive_threshold))
        m._step_scale = (
            step_scale(data.ratings, m._threshold) if m._p("weighting") != "binary" else 0.0
        )
        # All ratings go to the engine: those below the threshold are skipped by the
        # kernels but stay in the users' rows, so they are never drawn as negatives and
        # are filtered from recommendations like every seen item.
        self.on_workers = dsgd_placement(client, data, int(m.factors))
        return DSGD(
            client,
            data.ratings,
            data.n_users,
            data.n_items,
            n_blocks=m._resumable_blocks(),
            n_threads=m.n_threads,
            keep_on_workers=self.on_workers,
            seen_on_workers=self.on_workers[0],
            extension=block_extension(m, "rating"),
            keep_placed=keeps_blocks(data),
        )

    def begin(self, engine: DSGD) -> dict[str, Any]:
        self.engine = engine
        self.model.seen_items_ = engine.seen if engine.seen is not None else engine.seen_items()
        users, items = engine.positive_counts(self.model._threshold)
        self.model.user_positives_, self.model.item_popularity_ = users.astype(np.int32), items
        return self.model._fit_identity(self.data, engine.digest(), engine.n_blocks)

    def initial_state(self, rng: np.random.Generator) -> tuple[State, State]:
        return initial_dsgd_state(self.model, self.data, rng, self.engine.n_blocks)

    def sampling_seed(self, rng: np.random.Generator) -> int:
        seed = self.model.random_state
        return int(seed) if seed is not None else int(rng.integers(2**62))

    def kernel(self, iteration: int) -> Any:
        return self.model._make_kernel(iteration, self.model.epoch_learning_rate(iteration))

    def record(self, iteration: int, report: EpochReport) -> dict[str, Any]:
        m = self.model
        record = m._epoch_record(report, m.epoch_learning_rate(iteration))
        if record["positives"] == 0:
            if self.data.feedback == "events":
                raise ValueError(f"no event has a weight > 0 in {self.data.source}")
            raise ValueError(
                f"no rating is >= positive_threshold={m.positive_threshold}: "
                "lower positive_threshold for this rating scale"
            )
        return record

    def validate(self, iteration: int, current: Any) -> float:
        self.model._set_factors(*current())
        return self.model._validation_score(self.validation)

    def finish(self, result: FitResult) -> None:
        m = self.model
        m.metrics_["train_seconds"] = result.seconds
        if result.early_stopping:
            m.metrics_["best_iteration"] = (result.best_iteration or 0) + 1
            m.metrics_[m.validation_metric] = result.best_score
        m._set_factors(result.user, result.item)
        if self.engine.seen is not None:  # placed again if a worker was lost
            m.seen_items_ = self.engine.seen
        keep_blocks(m, self.data, self.engine, "rating")
        if m.history_:
            last = m.history_[-1]
            m.metrics_.update(
                objective=last["objective"], auc=last["auc"], n_positives=last["positives"]
            )


def _log_sums(part: Any, threshold: float) -> np.ndarray:
    value = part["rating"].to_numpy(dtype=np.float64)
    positive = value[value >= threshold]
    return np.array([np.log1p(positive).sum(), len(positive)])


def step_scale(ratings: Any, threshold: float) -> float:
    """``1 / mean(log(1 + w))`` over the positives: the scale that makes the weighted
    steps (:func:`mfdask.kernels.bpr.step_weight`) average 1 (one pass over the data,
    two numbers per partition back to the client). 0 (unweighted) without positives."""
    import dask

    if isinstance(ratings, LocalRatings):
        total, count = _log_sums(ratings.frame, threshold)
    else:
        parts = [dask.delayed(_log_sums)(p, threshold) for p in ratings.to_delayed()]
        total, count = np.sum(dask.compute(*parts), axis=0) if parts else (0.0, 0.0)
    return float(count / total) if total > 0 else 0.0
