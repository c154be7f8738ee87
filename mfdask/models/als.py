"""Implicit-feedback alternating least squares (Hu, Koren & Volinsky 2008)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
from tqdm.auto import tqdm

from mfdask.data import schema
from mfdask.data.training import TrainingData
from mfdask.engine.als import BlockALS, SolveSpec
from mfdask.engine.cluster import session
from mfdask.models.base import (
    EpochCallback,
    FactorModel,
    _check_positive_int,
    _check_validation_metric,
)
from mfdask.models.fitloop import BestIteration

CONFIDENCE_OFFSETS = {"paper": 1.0, "implicit": 0.0}
REGULARIZATION_SCALINGS = ("none", "count")
PREFERENCES = ("binary", "rating")
SOLVERS = ("cg", "cholesky")


class ALS(FactorModel):
    """Matrix factorization for implicit feedback by weighted alternating least squares.

    The model of Hu, Koren & Volinsky, "Collaborative Filtering for Implicit Feedback
    Datasets" (ICDM 2008): every (user, item) cell is a training example with preference
    ``p = 1`` if the user gave the item a positive (rating ``>= positive_threshold``) and
    ``p = 0`` otherwise, weighted by a confidence ``C`` that is high for observed positives
    and 1 for everything else. It minimises ``sum C_ui (p_ui - x_u . y_i)^2`` plus L2 on
    the factors by alternately solving every user's and every item's least-squares
    problem in closed form. Use it when all you have (or all you trust) is which items a
    user interacted with; it ranks well, trains in a handful of iterations, and its
    factors give good item-item similarities. For predicting rating values use ``SVD``;
    for directly optimising a ranking loss try ``BPR`` or ``WARP``.

    Each half-iteration solves the normal equations
    ``(YᵀY + Yᵤᵀ(Cᵤ - I)Yᵤ + λᵤI) xᵤ = YᵤᵀCᵤpᵤ`` (paper eq. 4), with ``YᵀY`` computed once
    per half-iteration; ``solver="cholesky"`` solves them exactly, ``solver="cg"`` takes
    ``cg_steps`` conjugate-gradient steps from the previous factors (Takács, Pilászy & Tikk,
    "Applications of the conjugate gradient method for implicit feedback collaborative
    filtering", RecSys 2011), which is several times faster at equal ranking quality.
    The work is distributed as Spark MLlib's ALS does (see :mod:`mfdask.engine.als`).

    Three choices change what the same ``alpha`` and ``regularization`` mean:

    - ``confidence="paper"``: observed ``C = 1 + alpha * r`` (Hu et al.; Spark MLlib).
      ``confidence="implicit"``: observed ``C = alpha * r`` (the ``implicit`` library
      since 0.5, which multiplies the user-item matrix by ``alpha``); with ``alpha < 1`` an
      observed entry then weighs *less* than a missing one.
    - ``regularization_scaling="none"``: ``λ`` for every row (Hu et al.; ``implicit``).
      ``"count"``: ``λ · nᵤ`` with ``nᵤ`` the row's number of positives (ALS-WR, Zhou et al.
      2008; Spark MLlib).
    - ``preference="binary"``: ``r = 1`` for every positive (``implicit`` on a 0/1 matrix).
      ``"rating"``: ``r`` is the rating itself (Spark fed raw ratings).

    So ``ALS(confidence="implicit", regularization_scaling="none", preference="binary")``
    is the same model as ``implicit.als.AlternatingLeastSquares`` with the same ``factors``,
    ``regularization``, ``alpha`` and ``iterations`` fitted on the 0/1 positives matrix, and
    ``ALS(confidence="paper", regularization_scaling="count", preference="rating")`` is
    Spark's ``ALS(implicitPrefs=True)`` on the ratings with ``rating >= threshold`` kept.

    The defaults (paper confidence, count-scaled ``λ = 0.1``, ``alpha = 2``, binary ``r``)
    come from a validation grid on ML-1M (``benchmarks/bench_als.py --tune``): they were
    within 2 % of the best NDCG@10 found (plain ``λ = 50``), and count scaling keeps the
    balance between penalty and data term when the number of ratings per row changes, where
    a plain ``λ`` tuned on one dataset is too strong or too weak on another.

    Differences from implicit / Spark: ratings below ``positive_threshold`` are treated as
    missing (``p = 0``, ``C = 1``) but still count as seen and are filtered out of
    recommendations; a row without positives gets a zero factor; the initial factors are
    ``N(0, 0.01²)`` drawn by global row index from ``random_state``, so the model does not
    depend on how rows are blocked (up to float rounding of the Gram reduction).

    Parameters
    ----------
    factors : int
        Latent dimension ``k``.
    regularization : float
        λ.
    alpha : float
        Confidence slope.
    iterations : int
        Full (user half + item half) iterations.
    solver : {"cg", "cholesky"}
    cg_steps : int
        Conjugate-gradient steps per row and half-iteration (``solver="cg"``).
    confidence : {"paper", "implicit"}
    regularization_scaling : {"none", "count"}
    preference : {"binary", "rating"}
    positive_threshold : float
        Ratings at or above it are positives.
    random_state : int or None
        Seed of the initial factors.
    n_threads : int or None
        Threads per block solve on a worker; None uses the worker's threads.
    n_blocks : int or None
        Row blocks per side; None gives one per worker.
    calculate_training_loss : bool
        Compute the objective after each iteration (one extra pass over the positives).
    show_progress : bool
        A progress bar over iterations showing the loss.
    validation_k : int
        Cut-off of the validation metric when ``fit`` gets ``validation``.
    validation_metric : str
        Key of :func:`mfdask.evaluate.evaluate_ranking`'s result to track, at
        ``validation_k`` (higher is better): ``"ndcg"``, ``"precision"``, ``"map"``...
    early_stopping_rounds : int or None
        With ``validation``: stop when the metric has not improved for this many
        iterations and keep the best iteration's factors.
    checkpoint_dir : str or None
        Directory for checkpoints (factors, optimiser state, history) written atomically
        every ``checkpoint_every`` iterations; ``fit(..., resume=True)`` continues from the
        newest. None keeps checkpoints in memory only, as restart points for recovering
        from a lost worker.
    checkpoint_every : int
        Iterations between checkpoints. Each checkpoint also cuts the task lineage on the
        scheduler (the fit continues from the concrete arrays), so long fits keep a
        bounded task graph.

    Attributes
    ----------
    user_factors_ : (n_users, factors) float32
    item_factors_ : (n_items, factors) float32
    seen_items_ : (n_users, n_items) bool CSR
        Every rated item, positive or not.
    history_ : list of dict
        Per iteration: ``iteration``, ``loss`` (objective / number of positives),
        ``seconds`` and the validation metric when computed.
    """

    model_name: ClassVar[str] = "als"
    implicit: ClassVar[bool] = True

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.1,
        alpha: float = 2.0,
        iterations: int = 15,
        solver: str = "cg",
        cg_steps: int = 3,
        confidence: str = "paper",
        regularization_scaling: str = "count",
        preference: str = "binary",
        positive_threshold: float = schema.DEFAULT_POSITIVE_THRESHOLD,
        random_state: int | None = None,
        n_threads: int | None = None,
        n_blocks: int | None = None,
        calculate_training_loss: bool = True,
        show_progress: bool = False,
        validation_k: int = 10,
        validation_metric: str = "ndcg",
        early_stopping_rounds: int | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 5,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.solver = solver
        self.cg_steps = cg_steps
        self.confidence = confidence
        self.regularization_scaling = regularization_scaling
        self.preference = preference
        self.positive_threshold = positive_threshold
        self.random_state = random_state
        self.n_threads = n_threads
        self.n_blocks = n_blocks
        self.calculate_training_loss = calculate_training_loss
        self.show_progress = show_progress
        self.validation_k = validation_k
        self.validation_metric = validation_metric
        self.early_stopping_rounds = early_stopping_rounds
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every

    def _validate_params(self) -> None:
        _check_positive_int("factors", self.factors)
        _check_positive_int("iterations", self.iterations)
        _check_positive_int("cg_steps", self.cg_steps)
        _check_positive_int("validation_k", self.validation_k)
        _check_validation_metric(self.validation_metric)
        for name in ("n_threads", "n_blocks", "early_stopping_rounds"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        for name, value, options in (
            ("solver", self.solver, SOLVERS),
            ("confidence", self.confidence, tuple(CONFIDENCE_OFFSETS)),
            ("regularization_scaling", self.regularization_scaling, REGULARIZATION_SCALINGS),
            ("preference", self.preference, PREFERENCES),
        ):
            if value not in options:
                raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
        for name in ("regularization", "alpha"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.confidence == "implicit" and self.alpha <= 0:
            raise ValueError("confidence='implicit' needs alpha > 0 (observed C = alpha * r)")

    def _spec(self) -> SolveSpec:
        return SolveSpec(
            solver=self.solver,
            cg_steps=self.cg_steps,
            regularization=float(self.regularization),
            count_scaled=self.regularization_scaling == "count",
            alpha=float(self.alpha),
            confidence_offset=CONFIDENCE_OFFSETS[self.confidence],
            n_threads=self.n_threads,
        )

    def _initial_factors(self, data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
        """``N(0, 0.01²)`` factors, users then items, one row per global index."""
        rng = np.random.default_rng(self.random_state)
        users = (rng.standard_normal((data.n_users, self.factors)) * 0.01).astype(np.float32)
        items = (rng.standard_normal((data.n_items, self.factors)) * 0.01).astype(np.float32)
        return users, items

    def _fit(self, data: TrainingData, validation: Any, callback: EpochCallback | None) -> None:
        with session() as client:
            run = BlockALS(
                client,
                data.ratings,
                data.n_users,
                data.n_items,
                self._spec(),
                positive_threshold=float(self.positive_threshold),
                binary=self.preference == "binary",
                n_blocks=self._resumable_blocks(),
            )
            try:
                if run.n_positives == 0:
                    raise ValueError(
                        f"no rating is >= positive_threshold={self.positive_threshold} in "
                        f"{data.source}: lower positive_threshold for this rating scale"
                    )
                self.seen_items_ = run.seen
                start = self._checkpoints.begin(self._fit_identity(data, run.digest, run.n_blocks))
                self._iterate(client, run, data, validation, callback, start)
            finally:
                run.close()
        self.metrics_["n_positives"] = run.n_positives

    def _iterate(
        self,
        client: Any,
        run: BlockALS,
        data: TrainingData,
        validation: Any,
        callback: EpochCallback | None,
        start: Any,
    ) -> None:
        """Iterate with checkpoints; the best iteration is kept with early stopping.

        Checkpoint state: factors, the best iteration's factors and score, the history.
        ALS draws nothing at random after the start, so a resumed or recovered fit
        computes exactly the floats of an uninterrupted one.
        """
        best = BestIteration(higher_is_better=True, patience=self.early_stopping_rounds)
        progress = tqdm(total=self.iterations, disable=not self.show_progress, unit="it")

        def step(iteration: int) -> bool:
            started = time.perf_counter()
            run.iterate()  # users against items, then items against users
            run.wait()
            record: dict[str, Any] = {
                "iteration": iteration + 1,
                "seconds": time.perf_counter() - started,
            }
            if self.calculate_training_loss:
                record["loss"] = run.loss()
                progress.set_postfix(loss=f"{record['loss']:.5f}")
            if validation is not None:
                self.user_factors_, self.item_factors_ = run.factors()
                score = self._validation_score(validation)
                record[self.validation_metric] = score
                best.offer(score, iteration, lambda: (self.user_factors_, self.item_factors_))
            keep_going = self._record_epoch(record, callback)
            if best.exhausted(iteration):
                keep_going = False
            progress.update(1)
            return keep_going

        def capture() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            users, items = run.factors()
            arrays = {"user_factors": users, "item_factors": items}
            if best:
                arrays.update(best_user_factors=best.state[0], best_item_factors=best.state[1])
            return arrays, {"history": self.history_, "best": best.summary()}

        def reseed(arrays: dict[str, np.ndarray]) -> None:
            run.initialize(arrays["user_factors"], arrays["item_factors"])

        def restore(point: Any) -> None:
            if point is None:
                best.clear()
                self.history_ = []
                run.initialize(*self._initial_factors(data))
            else:
                self.history_ = list(point.state["history"])
                arrays = point.arrays
                best.load(
                    point.state.get("best"),
                    (arrays.get("best_user_factors"), arrays.get("best_item_factors")),
                )
                reseed(arrays)
            progress.n = len(self.history_)
            progress.refresh()

        final = self._run_iterations(
            client,
            self.iterations,
            start,
            progress=progress,
            step=step,
            capture=capture,
            restore=restore,
            reseed=reseed,
            rebuild=run.rebuild,
        )
        self.user_factors_ = final.arrays["user_factors"]
        self.item_factors_ = final.arrays["item_factors"]
        if best and self.early_stopping_rounds is not None:
            self.metrics_["best_iteration"] = best.iteration + 1
            self.metrics_[self.validation_metric] = best.score
            self.user_factors_, self.item_factors_ = best.state
