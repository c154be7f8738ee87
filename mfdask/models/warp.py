"""WARP: weighted approximate-rank pairwise loss (Weston et al. 2011) on the DSGD engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mfdask.data import schema
from mfdask.data.training import TrainingData
from mfdask.engine.dsgd import Drawn, EpochReport
from mfdask.kernels import warp as kernels
from mfdask.models.base import _check_positive_int
from mfdask.models.pairwise import PairwiseModel

OPTIMIZERS = ("adagrad", "sgd")
"""Values of ``WARP(optimizer=...)``."""

SQ_GRAD = "sq_grad"
"""State array of Adagrad's per-coordinate sums of squared gradients (user and item)."""

_NO_ACCUMULATOR = np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class WARPBlockKernel:
    """The WARP loss for :class:`mfdask.engine.dsgd.DSGD`: one epoch's hyper-parameters.

    ``train`` runs :func:`mfdask.kernels.warp.warp_sgd` over a slice of a cell; the
    rank estimate is scaled from the held block (``cell.n_local_items``) to the
    catalogue (``cell.n_items``).
    """

    learning_rate: float
    reg_user: float
    reg_pos: float
    reg_neg: float
    user_dims: int
    threshold: float
    max_sampled: int
    kos_k: int
    kos_n: int
    adagrad: bool
    max_rank_weight: float = kernels.MAX_RANK_WEIGHT
    step_scale: float = 0.0
    weighted_visits: bool = False
    accumulator_decay: float = 1.0
    popular_negatives: float = 0.0

    stat_names: ClassVar[tuple[str, ...]] = ("positives", "loss", "penalty", "correct", "sampled")

    def train(self, cell, shard, user, item, lo: int, hi: int, seed: int) -> np.ndarray:
        stats = np.zeros(kernels.N_STATS, dtype=np.float64)
        kernels.warp_sgd(
            cell.users,
            cell.items,
            cell.values,
            self.threshold,
            lo,
            hi,
            seed,
            shard.indptr,
            shard.indices,
            user["factors"],
            item["factors"],
            user.get(SQ_GRAD, _NO_ACCUMULATOR),
            item.get(SQ_GRAD, _NO_ACCUMULATOR),
            self.adagrad,
            cell.item_block,
            cell.n_blocks,
            cell.n_local_items,
            cell.n_items,
            self.user_dims,
            self.learning_rate,
            self.reg_user,
            self.reg_pos,
            self.reg_neg,
            self.max_sampled,
            self.kos_k,
            self.kos_n,
            stats,
            self.max_rank_weight,
            self.step_scale,
            self.weighted_visits,
            self.accumulator_decay,
            self.popular_negatives,
        )
        return stats


WEIGHTINGS = ("binary", "log", "log_sampled")
"""Values of ``WARP(weighting=...)``: unweighted, log-weighted steps, log-weighted visits."""


class WARP(PairwiseModel):
    """Matrix factorisation for implicit feedback by the WARP loss (optionally k-OS).

    WARP (Weston, Bengio and Usunier, "WSABIE", IJCAI 2011) ranks each positive above
    the items the user has not interacted with, weighting a violated pair by the log of
    the positive's estimated rank: for a positive, negatives are drawn until one scores
    within the margin (``x_uj > x_ui - 1``) or ``max_sampled`` draws are spent, and the
    number of draws ``N`` gives the rank estimate ``⌊(n - 1) / N⌋``. Positives that are
    already near the top draw many negatives and get small steps; badly ranked ones get
    large steps. It optimises the top of the ranking (precision@k) rather than AUC, and
    is LightFM's ``loss="warp"``; with ``kos_n > 0`` it is the k-order-statistic variant
    (Weston, Yee and Weiss, RecSys 2013; LightFM's ``"warp-kos"``), which steps on the
    ``kos_k``-th best of ``kos_n`` sampled positives of the user. The kernel is
    :mod:`mfdask.kernels.warp`.

    Training runs on the DSGD engine like :class:`~mfdask.models.bpr.BPR`; negatives
    are drawn from the item block held while a cell trains, and the rank estimate is
    scaled from the block's size to the catalogue's (``⌊(n_block - 1) / N⌋ · n / n_block``,
    see :func:`mfdask.kernels.warp.warp_rank`), so the weights do not depend on the
    number of blocks.

    Per epoch ``history_`` records ``objective`` (mean over positives of the weighted
    hinge ``L(rank)(1 - x_ui + x_uj)`` of the update, 0 when no violator was found, plus
    the L2 penalty of the updated rows, each before its step), ``loss`` (its data term),
    ``auc`` (share of positives scored above their first sampled negative),
    ``sampled_per_positive``, ``positives``, ``learning_rate``, ``seconds`` and
    ``positives_per_second``.

    Steps are Adagrad's by default (Duchi, Hazan and Singer, JMLR 2011; LightFM's
    default ``learning_schedule``): each coordinate of a factor or bias moves by
    ``learning_rate · g / √G``, ``G`` the sum of its squared gradients starting at 1
    (:func:`mfdask.kernels.warp.warp_update_adagrad`), so popular items and heavy users,
    updated at every few draws, settle while the long tail keeps large steps. The sums
    are state of the fit (``sq_grad``, one per factor entry), moved with the factor
    blocks and checkpointed with them. ``optimizer="sgd"`` gives plain SGD steps
    (:func:`mfdask.kernels.warp.warp_update`), usually with ``learning_rate=0.01`` and
    ``learning_rate_decay=1``. The defaults (Adagrad, ``learning_rate=0.1``,
    ``regularization=0.5``, no decay, 10 epochs) were chosen on a validation split of
    ML-1M train (``benchmarks/bench_bpr_warp.py``), where they rank better than SGD.

    Events (``user_id, item_id[, weight]``): every event with weight > 0 is a positive,
    sampled uniformly; with ``weighting="log"`` the rank weight of its step is multiplied
    by ``log(1 + w)`` scaled to average 1 over the data, as LightFM's ``sample_weight``
    multiplies its loss; with ``weighting="log_sampled"`` the steps stay unweighted and
    each positive is visited ``log(1 + w)`` times that scale per epoch on average
    instead (weighted sampling of positives by stochastic rounding of the visit count,
    :func:`mfdask.kernels.sgd_common.weighted_positives`: as many visits per epoch and
    the same block layout). The two differ under Adagrad, which divides a coordinate's
    step by the root of its summed squared gradients, so a weight that scales all of a
    row's gradients largely cancels, while visits change how often a row moves. The
    event default is unweighted steps without an item bias, which ranked better on
    Last.fm-2k's validation split than either weighting. Parameters left None take
    :attr:`RATING_DEFAULTS` on ratings and :attr:`EVENT_DEFAULTS` on events.

    Differences from LightFM: the L2 gradient ``λ x`` of the rows in a step is part of
    Adagrad's gradient, where LightFM rescales all rows lazily by its ``alpha``, so the
    weights are on different scales; negatives are items the user has not rated at all
    (LightFM's are the items without a positive interaction), drawn from the held item
    block with the rank rescaled; no feature
    matrices and no user bias (it does not change a user's ranking); the L2 weights of
    user, positive and negative are separate; factors start Gaussian rather than
    uniform.

    Parameters
    ----------
    factors : int
        Latent dimension ``k`` (plus one bias column with ``use_bias``).
    learning_rate : float or None
        Step size (Adagrad's base rate, or the SGD step of the first epoch); None: 0.1
        on ratings, 0.05 on events.
    learning_rate_decay : float or None
        (None: 0.) Epoch ``e`` uses ``learning_rate / (1 + learning_rate_decay · e)``; 0 (constant)
        suits Adagrad, which decays per coordinate by itself.
    regularization : float or None
        L2 weight λ_u on user factors, and the default of the items' weights (None: 0.5
        on ratings, 2 on events).
    item_regularization : float or None
        λ_i on the positive item's factors and bias; None: ``regularization``.
    negative_regularization : float or None
        λ_j on the negative item's; None: ``item_regularization``.
    epochs : int or None
        Passes over the positives (None: 10 on ratings, 80 on events).
    max_sampled : int or None
        Negatives drawn per positive before giving up on finding a violator (None: 20).
    max_rank_weight : float
        Clip of the rank weight ``ln(rank)``, LightFM's ``MAX_LOSS`` (10): it only
        binds for estimated ranks above ``e^10 ≈ 22,026``, i.e. catalogues above about
        22k items, where a positive beaten at the first draw would otherwise step with
        ``ln(n_items - 1)``. ``float("inf")`` turns the clip off.
    kos_k, kos_n : int
        k-OS WARP: step on the ``kos_k``-th best of ``kos_n`` positives drawn from the
        user's positives in the held block; ``kos_n = 0`` is plain WARP.
    optimizer : {"adagrad", "sgd"}
        Per-coordinate Adagrad steps, or plain SGD steps.
    accumulator_decay : float
        Adagrad's sums forget by this factor ρ at each step of their row, ``G ← ρ G +
        g²`` (:func:`mfdask.kernels.warp.adagrad_step`): 1 (default) is Adagrad, whose
        steps keep shrinking as a row is stepped on; below 1 a row's step stops
        shrinking after about ``1 / (1 - ρ)`` steps, so a larger fit does not end with
        smaller steps. Fold-in of new users keeps plain Adagrad.
    popular_negatives : float
        Share of the draws of negatives taken from the items of random ratings of the
        cell (so in proportion to their popularity among the cell's users) rather than
        uniformly from the held block; the rank estimate stays the uniform draws'. 0
        (default): uniform draws only, as WSABIE and LightFM.
    use_bias : bool or None
        Learn an item bias (an extra factor column whose user entry is fixed at 1).
        None: True on ratings, False on events.
    init_scale : float
        Initial factors are ``N(0, (init_scale / √k)²)``, drawn by global row index.
    weighting : {"binary", "log", "log_sampled"} or None
        Steps unweighted, weighted by ``log(1 + w)`` normalised to mean 1, or unweighted
        with positives visited in proportion to ``log(1 + w)``. None: binary (ratings
        and events: on Last.fm-2k's validation split neither weighting was better, see
        :attr:`EVENT_DEFAULTS`).
    positive_threshold : float
        Ratings at or above it are positives.
    random_state : int or None
        Seeds the initial factors, the visiting orders and the negatives.
        Default 0 in every model, so that a job run twice gives the same model; None
        draws fresh entropy (kept for a restart within the fit).
    n_threads : int or None
        Hogwild threads per cell; None uses the worker's threads.
    n_blocks : int or None
        ``B``; None gives one per worker.
    show_progress : bool
        A progress bar over epochs with the objective and the sampled AUC.
    validation_k, validation_metric, early_stopping_rounds, checkpoint_dir, checkpoint_every
        As for :class:`~mfdask.models.bpr.BPR`.

    Attributes
    ----------
    user_factors_ : (n_users, factors) float32
    item_factors_ : (n_items, factors) float32
    item_bias_ : (n_items,) float32 or None
    seen_items_ : (n_users, n_items) bool CSR
    history_ : list of dict
    """

    model_name: ClassVar[str] = "warp"
    weightings: ClassVar[tuple[str, ...]] = WEIGHTINGS
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "learning_rate": {"low": 0.01, "high": 0.5, "log": True},
        "regularization": {"low": 0.01, "high": 5.0, "log": True},
        "max_sampled": {"low": 5, "high": 100, "log": True},
    }
    """What :func:`mfdask.tune` searches by default (``epochs`` is the budget)."""
    RATING_DEFAULTS: ClassVar[dict[str, Any]] = {
        "learning_rate": 0.1,
        "learning_rate_decay": 0.0,
        "regularization": 0.5,
        "epochs": 10,
        "max_sampled": 20,
        "use_bias": True,
        "weighting": "binary",
    }
    EVENT_DEFAULTS: ClassVar[dict[str, Any]] = {
        "learning_rate": 0.05,
        "learning_rate_decay": 0.0,
        "regularization": 2.0,
        "epochs": 80,
        "max_sampled": 20,
        "use_bias": False,
        "weighting": "binary",
    }
    """Chosen on a validation split of Last.fm-2k's training part (the per-user holdout
    applied to it again; ``benchmarks/bench_lastfm.py``): NDCG@10 0.180 / 0.177 (seeds
    0 / 1) with unweighted steps, no item bias, λ = 2 and 80 epochs, against 0.173 at the
    earlier event defaults (log-weighted steps, item bias, λ = 1, 40 epochs) and 0.142 at
    the rating defaults; around it: λ 1.5 / 2.5 0.175 / 0.173, 50 / 120 epochs 0.174 /
    0.180, log-weighted steps 0.179, with the item bias 0.176 / 0.172 (seeds 0 / 1).
    On play counts the bias mostly learns popularity, which the factors already carry.

    A third round changed one thing at a time from these defaults (``--tune-mfdask
    warp3``, seeds 0 / 1; the defaults 0.180 / 0.177, implicit's tuned binary ALS 0.180
    on the same split) and found nothing better: ``max_sampled`` 5 / 10 / 50 / 100 0.172
    / 0.168, 0.175 / 0.173, 0.177 / 0.174, 0.174 / 0.174 (with 10 and log-weighted steps
    0.175 / 0.175); learning rate 0.1 0.176 / 0.173, 0.02 with 160 epochs 0.169 / 0.172,
    0.1 with decay 0.02 0.176 / 0.175; the rank-weight clip at 5 / 7 0.149 / 0.150,
    0.173 / 0.173 (it binds below ``ln 17,631 = 9.8``, flattening the weights WARP is
    made of); k-OS with the worst / 2nd-best of 5 positives 0.151 / 0.149, 0.165 /
    0.165; ``init_scale`` 0.03 / 0.3 0.177 / 0.178, 0.176 / 0.176; item λ 1 0.174 /
    0.174, user λ 4 with item λ 2 0.165 / 0.167, negative λ 0.5 / 4 0.175 / 0.175, 0.174
    / 0.175; log-weighted visits (``"log_sampled"``) 0.175 / 0.178, with λ 1.5 0.175 /
    0.176, with 120 epochs 0.178 / 0.180; plain SGD steps (learning rate 0.01, binary /
    log-weighted) 0.150 / 0.147, 0.152 / 0.149 (the weighting helps SGD, where Adagrad
    cancels it), 0.03 with decay 0.05 and log weights 0.160 / 0.161.

    A fourth round (``--tune-mfdask warp4``) scored each setting on three validation
    splits (the holdout of the training part with seeds 1, 2, 3; model seed 0), since on
    the first split alone WARP matched implicit's binary ALS while on test it trails it
    (and on a split of a split, 51 % of the data, it trails it too: 0.142 against
    0.147). Mean NDCG@10 (splits 1 / 2 / 3): the defaults 0.1789 (0.1799 / 0.1804 /
    0.1763), implicit's binary ALS at its tuned setting 0.1831 (0.1798 / 0.1870 /
    0.1826); ``accumulator_decay`` 0.999 / 0.9999 0.1777, 0.1776 (the steps' shrinking
    under Adagrad is not what costs); ``popular_negatives`` 0.2 / 0.5 0.1596 / 0.1328
    (popular items pushed down); 120 epochs 0.1807; λ 1.75 0.1779; ``max_sampled`` 30
    0.1792; log-weighted steps 0.1801, with 120 epochs 0.1804; log-weighted visits
    0.1794, with 120 / 160 / 240 / 320 epochs 0.1812 / 0.1823 / 0.1831 / 0.1834. The last
    are better than the defaults on validation, but on test (one run each, model seed 0)
    they reach 0.2356 / 0.2379 / 0.2385 for 120 / 240 / 320 epochs against implicit's
    binary ALS 0.2388 (the defaults 0.2308, 120 unweighted epochs 0.2320), below it still,
    at 1.5 / 3 / 4 times the fit's cost, so the defaults stay."""

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float | None = None,
        learning_rate_decay: float | None = None,
        regularization: float | None = None,
        item_regularization: float | None = None,
        negative_regularization: float | None = None,
        epochs: int | None = None,
        max_sampled: int | None = None,
        max_rank_weight: float = kernels.MAX_RANK_WEIGHT,
        kos_k: int = 5,
        kos_n: int = 0,
        optimizer: str = "adagrad",
        accumulator_decay: float = 1.0,
        popular_negatives: float = 0.0,
        use_bias: bool | None = None,
        init_scale: float = 0.1,
        weighting: str | None = None,
        positive_threshold: float = schema.DEFAULT_POSITIVE_THRESHOLD,
        random_state: int | None = 0,
        n_threads: int | None = None,
        n_blocks: int | None = None,
        show_progress: bool = False,
        validation_k: int = 10,
        validation_metric: str = "ndcg",
        early_stopping_rounds: int | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 5,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.learning_rate_decay = learning_rate_decay
        self.regularization = regularization
        self.item_regularization = item_regularization
        self.negative_regularization = negative_regularization
        self.epochs = epochs
        self.max_sampled = max_sampled
        self.max_rank_weight = max_rank_weight
        self.kos_k = kos_k
        self.kos_n = kos_n
        self.optimizer = optimizer
        self.accumulator_decay = accumulator_decay
        self.popular_negatives = popular_negatives
        self.use_bias = use_bias
        self.init_scale = init_scale
        self.weighting = weighting
        self.positive_threshold = positive_threshold
        self.random_state = random_state
        self.n_threads = n_threads
        self.n_blocks = n_blocks
        self.show_progress = show_progress
        self.validation_k = validation_k
        self.validation_metric = validation_metric
        self.early_stopping_rounds = early_stopping_rounds
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.max_sampled is not None:
            _check_positive_int("max_sampled", self.max_sampled)
        weight = self.max_rank_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"max_rank_weight must be a number > 0 (inf: no clip), got {weight!r}")
        _check_positive_int("kos_k", self.kos_k)
        if isinstance(self.kos_n, bool) or not isinstance(self.kos_n, (int, np.integer)):
            raise ValueError(f"kos_n must be an integer >= 0, got {self.kos_n!r}")
        if self.kos_n < 0:
            raise ValueError(f"kos_n must be >= 0 (0 = plain WARP), got {self.kos_n!r}")
        decay = self.accumulator_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"accumulator_decay must be in (0, 1] (1: Adagrad), got {decay!r}")
        share = self.popular_negatives
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ValueError(f"popular_negatives must be in [0, 1], got {share!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.kos_n and self.kos_k > self.kos_n:
            raise ValueError(
                f"k-OS needs kos_k <= kos_n, got kos_k={self.kos_k}, kos_n={self.kos_n}"
            )

    def _initial_state(
        self, data: TrainingData, rng: np.random.Generator | None = None
    ) -> tuple[dict, dict]:
        """The pairwise start (:meth:`PairwiseModel._initial_state`), plus Adagrad's sums.

        With ``optimizer="adagrad"`` both sides carry ``sq_grad``, shaped like their
        factors and initialised to 1, which the engine moves and checkpoints with them.
        """
        user, item = super()._initial_state(data, rng)
        if self.optimizer == "adagrad":
            user[SQ_GRAD] = np.ones_like(user["factors"])
            item[SQ_GRAD] = np.ones_like(item["factors"])
        return user, item

    def _drawn_state(self, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The pairwise start drawn on the workers, plus Adagrad's sums (1) there too."""
        user, item = super()._drawn_state(seed)
        if self.optimizer == "adagrad":
            user[SQ_GRAD] = Drawn(user["factors"].columns, fill=1.0)
            item[SQ_GRAD] = Drawn(item["factors"].columns, fill=1.0)
        return user, item

    def _make_kernel(self, epoch: int, learning_rate: float) -> WARPBlockKernel:
        reg_user, reg_pos, reg_neg = self._regularization()
        return WARPBlockKernel(
            learning_rate=learning_rate,
            reg_user=reg_user,
            reg_pos=reg_pos,
            reg_neg=reg_neg,
            user_dims=int(self.factors),
            threshold=self._threshold,
            max_sampled=int(self._p("max_sampled")),
            step_scale=self._step_scale,
            kos_k=int(self.kos_k),
            kos_n=int(self.kos_n),
            adagrad=self.optimizer == "adagrad",
            max_rank_weight=float(self.max_rank_weight),
            weighted_visits=self._p("weighting") == "log_sampled",
            accumulator_decay=float(self.accumulator_decay),
            popular_negatives=float(self.popular_negatives),
        )

    def _epoch_record(self, report: EpochReport, learning_rate: float) -> dict[str, Any]:
        s = report.stats
        n = s["positives"]
        return {
            "iteration": report.epoch + 1,
            "objective": (s["loss"] + s["penalty"]) / n if n else float("nan"),
            "loss": s["loss"] / n if n else float("nan"),
            "auc": s["correct"] / n if n else float("nan"),
            "sampled_per_positive": s["sampled"] / n if n else float("nan"),
            "positives": int(n),
            "learning_rate": float(learning_rate),
            "seconds": float(report.seconds),
            "positives_per_second": float(n / report.seconds) if report.seconds > 0 else 0.0,
        }
