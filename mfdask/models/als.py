"""Implicit-feedback alternating least squares (Hu, Koren & Volinsky 2008)."""

from __future__ import annotations

from typing import Any, ClassVar

import dask
import numpy as np

from mfdask.data import schema
from mfdask.data.implicit import positive_cut
from mfdask.data.training import TrainingData, map_ratings
from mfdask.engine.als import BlockALS, SolveSpec, default_blocks
from mfdask.engine.blocks import positive_counts
from mfdask.engine.checkpoint import BlockFiles
from mfdask.engine.cluster import room_for_copy, worker_addresses, worker_capacity
from mfdask.engine.state import FactorBlocks, keeps_on_workers
from mfdask.engine.trainer import FitResult, IterationReport, Objective, State
from mfdask.models.base import (
    EpochCallback,
    FactorModel,
    _check_positive_int,
    _check_validation_metric,
)
from mfdask.models.incremental import block_extension, keep_blocks, keeps_blocks

CONFIDENCE_OFFSETS = {"paper": 1.0, "implicit": 0.0}
REGULARIZATION_SCALINGS = ("none", "count")
PREFERENCES = ("binary", "rating")
WEIGHTINGS = ("binary", "linear", "log", "bm25")
BM25_K1 = 100.0
BM25_B = 0.8
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
    ``ALS(confidence="paper", regularization_scaling="count", regularization_exponent=1,
    preference="rating")`` is Spark's ``ALS(implicitPrefs=True)`` on the ratings with
    ``rating >= threshold`` kept.

    The defaults on ratings (paper confidence, binary ``r``, ``λ = 1.3`` scaled by
    ``nᵤ^0.75``, ``alpha = 4``) come from :func:`mfdask.tune` (24 trials) on a
    validation part carved from the training part of ML-1M's ``user_holdout`` split
    (``benchmarks/bench_tune.py``; its best: ``λ = 1.29``, ``alpha = 4.22``,
    ``ν = 0.734``), rounded, and were checked not to be worse elsewhere
    (``benchmarks/bench_defaults.py``, test NDCG@10 against the earlier ALS-WR
    ``λ = 0.3 · nᵤ``: ML-1M 0.3988 vs 0.3945, ML-100K 0.3905 vs 0.3738,
    ML-latest-small 0.3095 vs 0.2988). Count scaling keeps the balance between penalty
    and data term when the number of ratings per row changes, where a plain ``λ`` tuned
    on one dataset is too strong or too weak on another; ``ν < 1`` (Rendle et al.,
    RecSys 2022) regularizes the heaviest rows (popular items, prolific users) less than
    in proportion to their counts.

    **Events** (``fit`` on ``user_id, item_id[, weight]``, see
    :mod:`mfdask.data.training`): every event with weight ``w > 0`` is a positive, and
    ``weighting`` turns ``w`` into the observed confidence (Hu et al. 2008, section 4):

    - ``"binary"``: ``C = 1 + alpha`` whatever ``w`` (the 0/1 matrix);
    - ``"linear"``: ``C = 1 + alpha * w``;
    - ``"log"``: ``C = 1 + alpha * log(1 + w / epsilon)``: a play count of 10,000 is not
      1,000 times as sure as one of 10;
    - ``"bm25"``: ``C = 1 + alpha * bm25(w)`` with the weighting of the ``implicit``
      library's Last.fm example (items are the documents, users the terms;
      ``K1 = 100, B = 0.8``), computed over the training data.

    The weights are turned into confidences once, as the workers read each partition for
    placement (``bm25`` first needs one pass for its per-item totals and per-user counts),
    never per iteration. ``weighting``, ``alpha`` and ``regularization`` left None take
    defaults by the kind of data (:attr:`RATING_DEFAULTS`, :attr:`EVENT_DEFAULTS`,
    :meth:`resolved_params`): on ratings exactly the values above, with ``weighting``
    following ``preference``; on events ``"log"`` with the ``alpha`` and
    ``regularization`` chosen on a validation split carved from the training part of
    Last.fm-2k play counts (``benchmarks/bench_lastfm.py --tune``).

    Differences from implicit / Spark: ratings below ``positive_threshold`` are treated as
    missing (``p = 0``, ``C = 1``) but still count as seen and are filtered out of
    recommendations; a row without positives gets a zero factor; the initial factors are
    ``N(0, 0.01²)`` drawn by global row index from ``random_state``, so the model does not
    depend on how rows are blocked (up to float rounding of the Gram reduction).

    Parameters
    ----------
    factors : int
        Latent dimension ``k``.
    regularization : float or None
        λ (None: 1.3 on ratings, 0.5 on events).
    alpha : float or None
        Confidence slope (None: 4 on ratings, 1 on events).
    iterations : int
        Full (user half + item half) iterations.
    solver : {"cg", "cholesky"}
    cg_steps : int
        Conjugate-gradient steps per row and half-iteration (``solver="cg"``).
    confidence : {"paper", "implicit"}
    regularization_scaling : {"none", "count"}
    regularization_offset : float
        With count scaling, a row's L2 weight is ``λ · (nᵤ + regularization_offset)``:
        Rendle et al.'s frequency-scaled regularization ``λ (|Iᵤ| + α₀|I|)^ν`` at
        ``ν = 1`` ("Revisiting the Performance of iALS on Item Recommendation
        Benchmarks", RecSys 2022), whose ``α₀|I|`` (the unobserved items' total weight)
        is this offset, in units of ratings. 0 (the default) is ALS-WR's ``λ · nᵤ``.
    regularization_exponent : float or None
        With count scaling, the power ``ν`` of the count: a row's L2 weight is
        ``λ · (nᵤ^ν + regularization_offset)`` (None: 0.75 on ratings, 1 on events;
        ignored without count scaling). 1 is ALS-WR; below 1 a
        row with many positives is regularized less than in proportion to them (Rendle
        et al.'s frequency exponent ``ν``, applied to the count alone: the offset stays
        a constant ridge so that it remains one term of the shared ``YᵀY``).
    preference : {"binary", "rating"}
        For ratings when ``weighting`` is None (``"rating"`` is ``weighting="linear"``).
    weighting : {"binary", "linear", "log", "bm25"} or None
        How an observed value becomes a confidence (see above); None: by feedback.
    epsilon : float
        Scale of ``weighting="log"``: ``log(1 + w / epsilon)``.
    positive_threshold : float
        Ratings at or above it are positives (ratings only: every event with weight > 0
        is a positive).
    random_state : int or None
        Seed of the initial factors.
        Default 0 in every model, so that a job run twice gives the same model; None
        draws fresh entropy (kept for a restart within the fit).
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
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "regularization": {"low": 0.03, "high": 30.0, "log": True},
        "alpha": {"low": 1.0, "high": 30.0, "log": True},
        "regularization_exponent": {"low": 0.25, "high": 1.0},
    }
    """What :func:`mfdask.tune` searches by default (``iterations`` is the budget; the
    best iteration is kept): ``λ`` and ``alpha`` log-uniform, and the count exponent
    ``ν`` of the count-scaled ``λ · nᵤ^ν`` (a row's weight moves by orders of magnitude
    with ``ν``, so ``λ``'s range is wide; the sampler models the two jointly). ``alpha``
    starts at 1: below it an observed positive weighs less than twice a missing entry."""
    RATING_DEFAULTS: ClassVar[dict[str, Any]] = {
        "regularization": 1.3,
        "alpha": 4.0,
        "regularization_exponent": 0.75,
    }
    EVENT_DEFAULTS: ClassVar[dict[str, Any]] = {
        "regularization": 0.5,
        "alpha": 1.0,
        "weighting": "log",
        "regularization_exponent": 1.0,
    }
    """Chosen on a validation split of Last.fm-2k's training part (the per-user holdout
    applied again, seed 1): log weighting, ``alpha = 1``, count-scaled ``λ = 0.5`` gave
    NDCG@10 0.186 there, against 0.181-0.186 for ``alpha`` 0.5-2 at ``λ`` 0.3-1, 0.170
    at the rating defaults, 0.182 binary and 0.139 bm25 (``benchmarks/bench_lastfm.py``)."""

    def __init__(
        self,
        factors: int = 64,
        regularization: float | None = None,
        alpha: float | None = None,
        iterations: int = 15,
        solver: str = "cg",
        cg_steps: int = 3,
        confidence: str = "paper",
        regularization_scaling: str = "count",
        regularization_offset: float = 0.0,
        regularization_exponent: float | None = None,
        preference: str = "binary",
        weighting: str | None = None,
        epsilon: float = 1.0,
        positive_threshold: float = schema.DEFAULT_POSITIVE_THRESHOLD,
        random_state: int | None = 0,
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
        self.regularization_offset = regularization_offset
        self.regularization_exponent = regularization_exponent
        self.preference = preference
        self.weighting = weighting
        self.epsilon = epsilon
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
        if self.weighting is not None and self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {list(WEIGHTINGS)} or None, got {self.weighting!r}"
            )
        for name in (
            "regularization",
            "alpha",
            "epsilon",
            "regularization_offset",
            "regularization_exponent",
        ):
            value = getattr(self, name)
            if value is None and name in ("regularization", "alpha", "regularization_exponent"):
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not np.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0 (log(1 + w / epsilon)), got {self.epsilon!r}")
        if self.regularization_offset and self.regularization_scaling != "count":
            raise ValueError(
                "regularization_offset is added to a row's count (λ · (n_u + offset)): it "
                "needs regularization_scaling='count'"
            )
        if self.regularization_exponent not in (None, 1) and self.regularization_scaling != "count":
            raise ValueError(
                "regularization_exponent is the power of a row's count (λ · n_u^ν): it "
                "needs regularization_scaling='count'"
            )
        if self.confidence == "implicit" and self.alpha is not None and self.alpha <= 0:
            raise ValueError("confidence='implicit' needs alpha > 0 (observed C = alpha * r)")

    def resolved_params(self, feedback: str | None = None) -> dict[str, Any]:
        params = super().resolved_params(feedback)
        if params["weighting"] is None:  # ratings: as before weightings existed
            params["weighting"] = "binary" if self.preference == "binary" else "linear"
        return params

    def _spec(self) -> SolveSpec:
        return SolveSpec(
            solver=self.solver,
            cg_steps=self.cg_steps,
            regularization=float(self._p("regularization")),
            count_scaled=self.regularization_scaling == "count",
            count_power=float(self._p("regularization_exponent")),
            alpha=float(self._p("alpha")),
            confidence_offset=CONFIDENCE_OFFSETS[self.confidence],
            n_threads=self.n_threads,
            ridge=float(self._p("regularization")) * float(self.regularization_offset),
        )

    def _initial_factors(
        self, data: TrainingData, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``N(0, 0.01²)`` factors, users then items, one row per global index.

        ``rng`` defaults to one seeded by ``random_state``.
        """
        if rng is None:
            rng = np.random.default_rng(self.random_state)
        users = (rng.standard_normal((data.n_users, self.factors)) * 0.01).astype(np.float32)
        items = (rng.standard_normal((data.n_items, self.factors)) * 0.01).astype(np.float32)
        return users, items

    INIT_SCALE: ClassVar[float] = 0.01
    """Standard deviation of the initial factors."""

    def _fit(self, data: TrainingData, validation: Any, callback: EpochCallback | None) -> None:
        objective = _ALSObjective(self, data, validation)
        self._run_trainer(objective, self.iterations, "iteration", callback)


class _ALSObjective(Objective):
    """The ALS fit for :class:`mfdask.engine.trainer.Trainer`.

    Checkpoint state: factors, the best iteration's factors and score, the history. ALS
    draws nothing at random after the start, so a resumed or recovered fit computes
    exactly the floats of an uninterrupted one.
    """

    name = "ALS"
    progress_keys = ("loss",)
    finite_keys = ("loss",)

    def __init__(self, model: ALS, data: TrainingData, validation: Any) -> None:
        self.model, self.data, self.validation = model, data, validation
        # The next iteration may be submitted before this one is waited for unless the
        # loss of this one is computed from the engine's current factors (or the Dask
        # config value mfdask.als.look-ahead is false).
        self.looks_ahead = not model.calculate_training_loss and bool(
            dask.config.get("mfdask.als.look-ahead", True)
        )
        self.traffic: dict[str, Any] | None = None
        self.validation_key = None if validation is None else model.validation_metric
        self.advice = (
            f"raise regularization (now {model._p('regularization')}) or lower alpha "
            f"(now {model._p('alpha')})"
        )

    def build(self, client: Any) -> BlockALS:
        m, data = self.model, self.data
        k = int(m.factors)
        ratings, threshold, binary = confidence_input(m, data)
        self.values = placed_values(m, data)
        self.on_workers = (
            keeps_on_workers(client, data.n_users * k * 4),
            keeps_on_workers(client, data.n_items * k * 4),
        )
        self.client = client
        users_kept, items_kept = self.on_workers
        kept = (data.n_users * users_kept + data.n_items * items_kept) * k * 4
        if self.looks_ahead and kept and not room_for_copy(client, kept):
            # Submitting an iteration ahead keeps the previous one's blocks (to go back
            # to) until it ends: twice the state, which these workers have no room for.
            self.looks_ahead = False
        return BlockALS(
            client,
            ratings,
            data.n_users,
            data.n_items,
            m._spec(),
            positive_threshold=threshold,
            binary=binary,
            n_blocks=m._resumable_blocks()
            or default_blocks(
                len(worker_addresses(client)),
                max(data.n_users, data.n_items),
                k,
                *worker_capacity(client),
            ),
            seen_on_workers=self.on_workers[0],
            keep_on_workers=self.on_workers,
            factors=k,
            extension=None if self.values is None else block_extension(m, self.values),
            keep_placed=self.values is not None and keeps_blocks(data),
        )

    def begin(self, engine: BlockALS) -> dict[str, Any]:
        m, data = self.model, self.data
        self.engine = engine
        if engine.n_positives == 0:
            if data.feedback == schema.FEEDBACK_EVENTS:
                raise ValueError(f"no event has a weight > 0 in {data.source}")
            raise ValueError(
                f"no rating is >= positive_threshold={m.positive_threshold} in "
                f"{data.source}: lower positive_threshold for this rating scale"
            )
        m.seen_items_ = engine.seen
        # The engine's blocks hold the positives only: count every entry.
        users, items = positive_counts(
            engine.client, engine.user_blocks, data.n_users, data.n_items, None
        )
        m.user_positives_, m.item_popularity_ = users.astype(np.int32), items
        return m._fit_identity(data, engine.digest, engine.n_blocks)

    def initial_state(self, rng: np.random.Generator) -> tuple[State, State]:
        """Client-side draws (:meth:`ALS._initial_factors`) unless a side stays on the
        workers: that side is drawn there, block by block, by the counter-based generator
        of :mod:`mfdask.kernels.init` (other floats from the same seed, equally
        independent of the block layout). A warm start (``partial_fit`` wraps
        ``_initial_factors`` on the instance) goes through the client.

        A user side kept on the workers starts at zero rather than drawn: users are
        solved first, so their start is only the warm start of the first half-step's
        CG (Cholesky ignores it), where ``N(0, 0.01²)`` and 0 differ by about 0.01 per
        entry, while drawing ten million rows cost as much as the half-step itself."""
        m, data = self.model, self.data
        if not any(self.on_workers) or "_initial_factors" in m.__dict__:
            users, items = m._initial_factors(data, rng)
            return {"factors": users}, {"factors": items}
        seed = int(rng.integers(0, 2**63))
        sides: list[Any] = []
        for side, (kept, n, where) in enumerate(
            (
                (self.on_workers[0], data.n_users, self.engine.user_where),
                (self.on_workers[1], data.n_items, self.engine.item_where),
            )
        ):
            if kept and side == 0:
                sides.append(FactorBlocks.zeros(self.client, n, m.factors, where))
            elif kept:
                sides.append(
                    FactorBlocks.normal(self.client, n, m.factors, m.INIT_SCALE, seed + side, where)
                )
            else:
                side_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(side,)))
                draw = side_rng.standard_normal((n, m.factors)) * m.INIT_SCALE
                sides.append(draw.astype(np.float32))
        return {"factors": sides[0]}, {"factors": sides[1]}

    def sampling_seed(self, rng: np.random.Generator) -> int:
        return 0  # nothing is drawn after the start

    def record(self, iteration: int, report: IterationReport) -> dict[str, Any]:
        record: dict[str, Any] = {"iteration": iteration + 1, "seconds": report.seconds}
        self.traffic = self.engine.traffic()  # the wiring of the half-steps just run
        if self.model.calculate_training_loss:
            record["loss"] = self.engine.loss()
        return record

    def validate(self, iteration: int, current: Any) -> float:
        user, item = current()
        self.model.user_factors_, self.model.item_factors_ = user["factors"], item["factors"]
        return self.model._validation_score(self.validation)

    def finish(self, result: FitResult) -> None:
        m, engine = self.model, self.engine
        users: Any = result.user["factors"]
        items: Any = result.item["factors"]
        if isinstance(users, BlockFiles):  # a resumed fit that had already finished
            users = users.load(self.client, engine.user_where)
        if isinstance(items, BlockFiles):
            items = items.load(self.client, engine.item_where)
        m.user_factors_, m.item_factors_ = users, items
        m.seen_items_ = engine.seen  # placed again if a worker was lost
        if self.traffic is not None:
            m.metrics_["traffic"] = self.traffic
        if result.early_stopping:
            m.metrics_["best_iteration"] = (result.best_iteration or 0) + 1
            m.metrics_[m.validation_metric] = result.best_score
        m.metrics_["n_positives"] = self.engine.n_positives
        keep_blocks(m, self.data, engine, self.values or "")


def placed_values(model: ALS, data: TrainingData) -> str | None:
    """What the values of the placed blocks are (:func:`confidence_input`), as kept
    blocks record it; None for ``bm25``, whose weights change with any added rating."""
    weighting = model._p("weighting")
    if weighting == "bm25":
        return None
    threshold = positive_cut(data.feedback, model.positive_threshold)
    if weighting == "log":
        return f"log(epsilon={float(model.epsilon)!r}, threshold={threshold!r})"
    return "rating"


# ---------------------------------------------------------------------- confidences
def confidence_input(model: ALS, data: TrainingData) -> tuple[Any, float, bool]:
    """The values the ALS engine reads, its positive threshold and whether it binarises.

    Binary and linear weightings pass the data through unchanged (the engine keeps the
    entries at or above the threshold, as 1 or as they are), so a fit on ratings is the
    one it always was. ``log`` and ``bm25`` map every positive ``w`` to its weight
    ``f(w) > 0`` and every other entry to 0, once per partition as it is read for
    placement; the engine then keeps the entries ``> 0`` (a 0 entry stays seen).
    """
    weighting = model._p("weighting")
    threshold = positive_cut(data.feedback, model.positive_threshold)
    if weighting in ("binary", "linear"):
        return data.ratings, threshold, weighting == "binary"
    stats = None
    if weighting == "bm25":
        stats = bm25_stats(data.ratings, threshold, data.n_users, data.n_items)
    ratings = map_ratings(
        data.ratings, _weigh_partition, weighting, float(model.epsilon), threshold, stats
    )
    return ratings, schema.EVENT_POSITIVE_CUT, False


def _weigh_partition(
    part: Any, weighting: str, epsilon: float, threshold: float, stats: Any
) -> Any:
    """``rating`` replaced by its weight (0 for a non-positive entry); module level."""
    value = part[schema.RATING].to_numpy(dtype=np.float64)
    positive = value >= threshold
    if weighting == "log":
        weight = np.log1p(np.where(positive, value, 0.0) / epsilon)
    else:  # bm25
        user_idf, item_norm = stats
        u = part[schema.USER_IDX].to_numpy()
        i = part[schema.ITEM_IDX].to_numpy()
        weight = value * (BM25_K1 + 1.0) / (BM25_K1 * item_norm[i] + value) * user_idf[u]
    weight = np.where(positive, np.maximum(weight, schema.EVENT_POSITIVE_CUT), 0.0)
    return part.assign(**{schema.RATING: weight.astype(np.float32)})


def _partition_totals(part: Any, threshold: float, n_users: int, n_items: int) -> Any:
    value = part[schema.RATING].to_numpy(dtype=np.float64)
    positive = value >= threshold
    users = np.bincount(part[schema.USER_IDX].to_numpy()[positive], minlength=n_users)
    items = np.bincount(
        part[schema.ITEM_IDX].to_numpy()[positive], weights=value[positive], minlength=n_items
    )
    return users.astype(np.float64), items


def _add_totals(*totals: Any) -> Any:
    return sum(t[0] for t in totals), sum(t[1] for t in totals)


def bm25_stats(ratings: Any, threshold: float, n_users: int, n_items: int) -> Any:
    """``(user_idf (n_users,), item_norm (n_items,))`` float64 of the positives.

    As ``implicit.nearest_neighbours.bm25_weight`` on the item x user matrix: an item is
    a document, a user a term. ``idf_u = log(n_items) - log(1 + n_u)`` with ``n_u`` the
    user's positives; ``norm_i = (1 - B) + B * W_i / mean(W)`` with ``W_i`` the item's
    total weight. One pass over the data (per partition, the sums added on the client:
    two vectors the size of the id maps).
    """
    import dask

    from mfdask.data.training import LocalRatings

    if isinstance(ratings, LocalRatings):
        users, items = _partition_totals(ratings.frame, threshold, n_users, n_items)
    else:
        parts = [
            dask.delayed(_partition_totals)(p, threshold, n_users, n_items)
            for p in ratings.to_delayed()
        ]
        users, items = dask.compute(dask.delayed(_add_totals)(*parts))[0]
    idf = np.log(float(n_items)) - np.log1p(users)
    mean = float(items.mean()) if n_items else 1.0
    norm = (1.0 - BM25_B) + BM25_B * items / (mean if mean > 0 else 1.0)
    return idf, norm
