"""What BPR and WARP share: pairwise ranking by SGD on the DSGD engine.

Both learn from positives only (``rating >= positive_threshold``) by stepping on
(user, positive, negative) triples whose negative is drawn from the item block the
worker holds (see :mod:`mfdask.engine.dsgd` and :mod:`mfdask.kernels.sampling`). This
module holds the fit loop around the engine: initial factors, the learning-rate
schedule, per-epoch records (objective, sampled AUC, throughput), validation with early
stopping, the optional item-bias column, and saving it.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np

from mfdask.data.implicit import check_threshold
from mfdask.data.training import TrainingData
from mfdask.engine.cluster import session
from mfdask.engine.dsgd import DSGD, EpochReport, PendingEpoch
from mfdask.models.base import (
    EpochCallback,
    FactorModel,
    _check_positive_int,
    _check_validation_metric,
    _progress_bar,
)
from mfdask.models.fitloop import BestIteration, DSGDCheckpointing, EpochPipeline

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
    progress_stats: ClassVar[tuple[str, ...]] = ("objective", "auc")

    # Parameters both subclasses store (declarations only; see FactorModel):
    epochs: int
    learning_rate: float
    learning_rate_decay: float
    item_regularization: float | None
    negative_regularization: float | None
    use_bias: bool
    init_scale: float
    # Learned:
    item_bias_: np.ndarray | None

    # ------------------------------------------------------------------ parameters
    def _validate_params(self) -> None:
        _check_positive_int("factors", self.factors)
        _check_positive_int("epochs", self.epochs)
        _check_positive_int("validation_k", self.validation_k)
        _check_validation_metric(self.validation_metric)
        for name in ("n_threads", "n_blocks", "early_stopping_rounds"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if _check_nonnegative("learning_rate", self.learning_rate) == 0:
            raise ValueError("learning_rate must be > 0")
        _check_nonnegative("learning_rate_decay", self.learning_rate_decay)
        _check_nonnegative("init_scale", self.init_scale)
        for name in ("regularization", "item_regularization", "negative_regularization"):
            if getattr(self, name) is not None:
                _check_nonnegative(name, getattr(self, name))
        check_threshold(self.positive_threshold)

    def _regularization(self) -> tuple[float, float, float]:
        """λ_u, λ_i, λ_j: item and negative default to the user's ``regularization``."""
        reg = float(self.regularization)
        reg_pos = reg if self.item_regularization is None else float(self.item_regularization)
        reg_neg = reg_pos if self.negative_regularization is None else self.negative_regularization
        return reg, reg_pos, float(reg_neg)

    def epoch_learning_rate(self, epoch: int) -> float:
        """The step size of epoch ``epoch`` (0-based): ``learning_rate / (1 + decay · epoch)``.

        An inverse-time schedule (Robbins-Monro conditions hold for any decay > 0);
        ``learning_rate_decay = 0`` keeps it constant.
        """
        return float(self.learning_rate) / (1.0 + float(self.learning_rate_decay) * epoch)

    # ------------------------------------------------------------------ fitting
    def _initial_state(self, data: TrainingData) -> tuple[dict, dict]:
        """``N(0, (init_scale / √k)²)`` factors by global row; the bias column 1 / 0.

        Drawn on the client row by row of the full matrices, so the start does not
        depend on how rows are blocked. The scale keeps initial scores ``p·q`` of order
        ``init_scale²`` whatever ``k``.
        """
        rng = np.random.default_rng(self.random_state)
        k = int(self.factors)
        extra = 1 if self.use_bias else 0
        std = float(self.init_scale) / np.sqrt(k)
        users = np.zeros((data.n_users, k + extra), dtype=np.float32)
        items = np.zeros((data.n_items, k + extra), dtype=np.float32)
        users[:, :k] = rng.standard_normal((data.n_users, k), dtype=np.float32) * std
        items[:, :k] = rng.standard_normal((data.n_items, k), dtype=np.float32) * std
        if self.use_bias:
            users[:, k] = 1.0  # fixed: x_ui = p_u·q_i + 1·b_i
        return {"factors": users}, {"factors": items}

    def _make_kernel(self, epoch: int, learning_rate: float) -> Any:
        raise NotImplementedError

    def _epoch_record(self, report: EpochReport, learning_rate: float) -> dict[str, Any]:
        raise NotImplementedError

    def _seed(self) -> int:
        if self.random_state is None:
            return int(np.random.SeedSequence().generate_state(1)[0])
        return int(self.random_state)

    def _fit(self, data: TrainingData, validation: Any, callback: EpochCallback | None) -> None:
        threshold = check_threshold(self.positive_threshold)
        with session() as client:
            # All ratings go to the engine: those below the threshold are skipped by the
            # kernels but stay in the users' rows, so they are never drawn as negatives
            # and are filtered from recommendations like every seen item.
            engine = DSGD(
                client,
                data.ratings,
                data.n_users,
                data.n_items,
                n_blocks=self._resumable_blocks(),
                n_threads=self.n_threads,
            )
            try:
                self.seen_items_ = engine.seen_items()
                start = self._checkpoints.begin(
                    self._fit_identity(data, engine.digest(), engine.n_blocks)
                )
                self._train(client, engine, data, validation, callback, threshold, start)
            finally:
                engine.close()

    def _train(
        self,
        client: Any,
        engine: DSGD,
        data: TrainingData,
        validation: Any,
        callback: EpochCallback | None,
        threshold: float,
        start: Any,
    ) -> None:
        """Epochs with checkpoints, validation and early stopping.

        Checkpoint state: factors, the best epoch's factors and score, the seed and the
        history (the learning rate is a function of the epoch). Every random stream is
        derived from ``(seed, epoch, block)``, so with one thread per cell a resumed or
        recovered fit equals an uninterrupted one bitwise.
        """
        best = BestIteration(higher_is_better=True, patience=self.early_stopping_rounds)
        state = DSGDCheckpointing(engine, best)
        ctx = {"seed": self._seed()}
        self._threshold = threshold
        bar = _progress_bar(bool(self.show_progress), int(self.epochs))
        n_epochs = int(self.epochs)

        def submit(epochs: range) -> list[PendingEpoch]:
            kernels = [self._make_kernel(e, self.epoch_learning_rate(e)) for e in epochs]
            return engine.submit_epochs(kernels, epochs.start, ctx["seed"])

        def may_look_ahead(epoch: int) -> bool:
            # The learning rate is a function of the epoch alone, so without validation
            # the next epoch can be submitted before this one is collected; not across a
            # checkpoint, which must capture this epoch's state.
            return validation is None and epoch < n_epochs and not self._checkpoints.due(epoch)

        epochs = EpochPipeline(
            engine,
            submit,
            may_look_ahead,
            fuse=callback is None,
        )

        def step(epoch: int) -> bool:
            rate = self.epoch_learning_rate(epoch)
            report = epochs.run(epoch)
            record = self._epoch_record(report, rate)
            if record["positives"] == 0:
                raise ValueError(
                    f"no rating is >= positive_threshold={self.positive_threshold}: "
                    "lower positive_threshold for this rating scale"
                )
            if not np.isfinite(record["objective"]):
                raise FloatingPointError(
                    f"{type(self).__name__} diverged in epoch {report.epoch + 1} "
                    f"(objective {record['objective']}): lower learning_rate "
                    f"({self.learning_rate}) or raise regularization"
                )
            keep_going = True
            if validation is not None:
                self._set_factors(*engine.gather_state())
                score = self._validation_score(validation)
                record[self.validation_metric] = score
                state.offer(score, epoch)
                keep_going = not best.exhausted(epoch)
            if not self._record_epoch(record, callback):
                keep_going = False
            if bar is not None:
                bar.update(1)
                shown = {k: f"{record[k]:.4f}" for k in self.progress_stats if k in record}
                bar.set_postfix(shown)
            if not keep_going:
                epochs.stop()
            return keep_going

        def capture() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            extra = {"seed": ctx["seed"], "history": self.history_, "best": best.summary()}
            return state.capture(), extra

        def restore(point: Any) -> None:
            epochs.forget()
            if point is None:
                best.clear()
                engine.set_state(*self._initial_state(data))
                self.history_ = []
            else:
                ctx["seed"] = int(point.state["seed"])
                self.history_ = list(point.state["history"])
                state.restore(point.arrays, point.state.get("best"))
            if bar is not None:
                bar.n = len(self.history_)
                bar.refresh()

        started = time.perf_counter()
        final = self._run_iterations(
            client,
            n_epochs,
            start,
            progress=bar,
            step=step,
            capture=capture,
            restore=restore,
            reseed=state.reseed,
            rebuild=engine.rebuild,
        )
        self.metrics_["train_seconds"] = time.perf_counter() - started
        if best and self.early_stopping_rounds is not None:
            self.metrics_["best_epoch"] = best.iteration + 1
            self.metrics_[self.validation_metric] = best.score
        self._set_factors(*state.final(final.arrays))
        if self.history_:
            last = self.history_[-1]
            self.metrics_.update(
                objective=last["objective"], auc=last["auc"], n_positives=last["positives"]
            )

    def _set_factors(self, user: dict[str, np.ndarray], item: dict[str, np.ndarray]) -> None:
        k = int(self.factors)
        self.user_factors_ = np.ascontiguousarray(user["factors"][:, :k])
        self.item_factors_ = np.ascontiguousarray(item["factors"][:, :k])
        self.item_bias_ = np.ascontiguousarray(item["factors"][:, k]) if self.use_bias else None

    # ------------------------------------------------------------------ scoring
    def _score_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``[p_u, 1]`` and ``[q_i, b_i]`` with a bias, so one product gives the score."""
        bias = getattr(self, "item_bias_", None)
        if bias is None:
            return self.user_factors_, self.item_factors_
        ones = np.ones((self.user_factors_.shape[0], 1), dtype=np.float32)
        return (
            np.hstack([self.user_factors_, ones]),
            np.hstack([self.item_factors_, bias[:, None].astype(np.float32)]),
        )

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
