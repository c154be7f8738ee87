"""BPR: Bayesian personalised ranking (Rendle et al. 2009) on the DSGD engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mfdask.data import schema
from mfdask.engine.dsgd import EpochReport
from mfdask.kernels import bpr as kernels
from mfdask.models.base import _check_positive_int
from mfdask.models.pairwise import PairwiseModel


@dataclass(frozen=True)
class BPRBlockKernel:
    """The BPR loss for :class:`mfdask.engine.dsgd.DSGD`: one epoch's hyper-parameters.

    ``train`` runs :func:`mfdask.kernels.bpr.bpr_sgd` over a slice of a cell, drawing
    each positive's negative among the held item block's items.
    """

    learning_rate: float
    reg_user: float
    reg_pos: float
    reg_neg: float
    user_dims: int
    threshold: float
    step_scale: float = 0.0
    negative_samples: int = 1

    stat_names: ClassVar[tuple[str, ...]] = ("triples", "loss", "penalty", "correct")

    def train(self, cell, shard, user, item, lo: int, hi: int, seed: int) -> np.ndarray:
        stats = np.zeros(kernels.N_STATS, dtype=np.float64)
        kernels.bpr_sgd(
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
            cell.item_block,
            cell.n_blocks,
            cell.n_local_items,
            self.user_dims,
            self.learning_rate,
            self.reg_user,
            self.reg_pos,
            self.reg_neg,
            stats,
            cell.member_bits,
            self.step_scale,
            self.negative_samples,
        )
        return stats


class BPR(PairwiseModel):
    """Matrix factorisation for implicit feedback by Bayesian personalised ranking.

    BPR (Rendle, Freudenthaler, Gantner and Schmidt-Thieme, UAI 2009) learns to score
    every positive ``i`` of a user above the items ``j`` the user has not interacted
    with, by SGD on ``-ln σ(x_ui - x_uj)`` with L2 penalties (LearnBPR, fig. 4 there;
    the kernel is :mod:`mfdask.kernels.bpr`). Use it for top-N recommendation from
    clicks, plays or high ratings; it optimises AUC, so it spreads its effort over the
    whole ranking (WARP concentrates on the top of it).

    The ratings are cut into ``B x B`` cells trained stratum by stratum across workers
    (DSGD, :mod:`mfdask.engine.dsgd`), with ``n_threads`` Hogwild threads per cell. Each
    positive's negative is drawn uniformly from the items of the item block held while
    its cell trains, among those the user has not rated: since residue blocking makes
    each block a uniform sample of the catalogue, every item is still a negative for
    every user once per epoch in expectation.

    Per epoch ``history_`` records ``objective`` (the mean over the epoch's triples of
    ``-ln σ(x_uij) + ½(λ_u‖p_u‖² + λ_i‖q_i‖² + λ_j‖q_j‖²)``, each measured just before
    its step: the loss SGD descends), ``loss`` (its data term), ``auc`` (the share of
    triples already ranked right before their step, a sampled training AUC),
    ``positives``, ``learning_rate``, ``seconds`` and ``positives_per_second``.

    Events (``user_id, item_id[, weight]``): every event with weight > 0 is a positive,
    sampled uniformly as a rating's is, and its step is weighted by ``log(1 + w)``
    scaled to average 1 over the data (``weighting="log"``, the event default). This is
    what LightFM's ``sample_weight`` does to its loss; weighting the *sampling* of
    positives instead would need a per-cell alias table and would change which
    positives an epoch visits, its cost and its seeds, where a weighted step changes
    only the step length. Parameters left None take :attr:`RATING_DEFAULTS` on ratings
    (the values documented below) and :attr:`EVENT_DEFAULTS` on events (chosen on a
    validation split of Last.fm-2k's training part, ``benchmarks/bench_lastfm.py``).

    Differences from ``implicit``'s BayesianPersonalizedRanking: ratings below
    ``positive_threshold`` are not positives but are never drawn as negatives (they
    were interacted with) and are filtered from recommendations; the objective is
    reported, not only the share of right-ranked triples; the L2 weights of user,
    positive and negative item are separate; the learning rate can decay.

    Parameters
    ----------
    factors : int
        Latent dimension ``k`` (plus one bias column with ``use_bias``).
    learning_rate : float or None
        SGD step size of the first epoch (None: 0.05, ratings and events).
    learning_rate_decay : float or None
        Epoch ``e`` uses ``learning_rate / (1 + learning_rate_decay · e)`` (None: 0 on
        ratings, 0.01 on events).
    regularization : float or None
        L2 weight λ_u on user factors, and the default of the items' weights (None: 0.01
        on ratings, 0.03 on events).
    item_regularization : float or None
        λ_i on the positive item's factors and bias; None: ``regularization``.
    negative_regularization : float or None
        λ_j on the negative item's; None: ``item_regularization``.
    epochs : int or None
        Passes over the positives (None: 60 on ratings, 200 on events). 60 was chosen on
        a validation split of ML-1M (NDCG@10 0.196 at 30 epochs, 0.203 at 45, 0.208 at
        60, 0.208 at 80): with fewer,
        the similar items are not settled yet (Toy Story 2 drifts from 1st to 6th next
        to Toy Story between seeds).
    use_bias : bool or None
        Learn an item bias (an extra factor column whose user entry is fixed at 1).
        None: True.
    init_scale : float
        Initial factors are ``N(0, (init_scale / √k)²)``, drawn by global row index.
    weighting : {"binary", "log"} or None
        Steps unweighted, or weighted by ``log(1 + w)`` normalised to mean 1 (see
        above). None: binary on ratings, log on events.
    negative_samples : int or None
        Negatives drawn per positive; the step uses the one scored highest (dynamic
        negative sampling, Zhang et al., SIGIR 2013). None: 1 (plain BPR) on ratings.
    positive_threshold : float
        Ratings at or above it are positives (ratings only: every event with weight > 0
        is a positive).
    random_state : int or None
        Seeds the initial factors, the visiting orders and the negatives. With one
        thread per cell a fit is reproducible for a given ``n_blocks``.
        Default 0 in every model, so that a job run twice gives the same model; None
        draws fresh entropy (kept for a restart within the fit).
    n_threads : int or None
        Hogwild threads per cell; None uses the worker's threads.
    n_blocks : int or None
        ``B``; None gives one per worker.
    show_progress : bool
        A progress bar over epochs with the objective and the sampled AUC.
    validation_k : int
        Cut-off of the validation metric when ``fit`` gets ``validation``.
    validation_metric : str
        Key of :func:`mfdask.evaluate.evaluate_ranking`'s result to track (higher is better).
    early_stopping_rounds : int or None
        With ``validation``: stop when the metric has not improved for this many epochs
        and keep the best epoch's factors.
    checkpoint_dir : str or None
        Directory for checkpoints (factors, optimiser state, history) written atomically
        every ``checkpoint_every`` epochs; ``fit(..., resume=True)`` continues from the
        newest. None keeps checkpoints in memory only, as restart points for recovering
        from a lost worker.
    checkpoint_every : int
        Epochs between checkpoints. Each checkpoint also cuts the task lineage on the
        scheduler (the fit continues from the concrete arrays), so long fits keep a
        bounded task graph.

    Attributes
    ----------
    user_factors_ : (n_users, factors) float32
    item_factors_ : (n_items, factors) float32
    item_bias_ : (n_items,) float32 or None
    seen_items_ : (n_users, n_items) bool CSR
        Every rated item, positive or not.
    history_ : list of dict
        One record per epoch (see above).
    """

    model_name: ClassVar[str] = "bpr"
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "learning_rate": {"low": 0.005, "high": 0.3, "log": True},
        "regularization": {"low": 1e-4, "high": 0.3, "log": True},
    }
    """What :func:`mfdask.tune` searches by default (``epochs`` is the budget)."""
    RATING_DEFAULTS: ClassVar[dict[str, Any]] = {
        "learning_rate": 0.05,
        "learning_rate_decay": 0.0,
        "regularization": 0.01,
        "epochs": 60,
        "use_bias": True,
        "weighting": "binary",
        "negative_samples": 1,
    }
    EVENT_DEFAULTS: ClassVar[dict[str, Any]] = {
        "learning_rate": 0.05,
        "learning_rate_decay": 0.01,
        "regularization": 0.03,
        "epochs": 200,
        "use_bias": True,
        "weighting": "log",
        "negative_samples": 10,
    }
    """Chosen on a validation split of Last.fm-2k's training part (the per-user holdout
    applied to it again; ``benchmarks/bench_lastfm.py``): NDCG@10 0.181 (seeds 0 and 1)
    with 10 dynamic negatives, λ = 0.03, 200 epochs and a learning rate decaying as
    ``1 / (1 + 0.01 e)``, against 0.175 / 0.173 at the earlier 100 constant-rate epochs
    with λ = 0.05, 0.140 at the rating defaults (plain BPR, 60 epochs); around it: λ 0.02
    0.178, λ 0.05 0.180, 150 / 300 epochs 0.179 / 0.180, 15 negatives 0.179, unweighted
    steps 0.179, no item bias 0.179."""

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float | None = None,
        learning_rate_decay: float | None = None,
        regularization: float | None = None,
        item_regularization: float | None = None,
        negative_regularization: float | None = None,
        epochs: int | None = None,
        use_bias: bool | None = None,
        init_scale: float = 0.1,
        weighting: str | None = None,
        negative_samples: int | None = None,
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
        self.use_bias = use_bias
        self.init_scale = init_scale
        self.weighting = weighting
        self.negative_samples = negative_samples
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
        if self.negative_samples is not None:
            _check_positive_int("negative_samples", self.negative_samples)

    def _make_kernel(self, epoch: int, learning_rate: float) -> BPRBlockKernel:
        reg_user, reg_pos, reg_neg = self._regularization()
        return BPRBlockKernel(
            learning_rate=learning_rate,
            reg_user=reg_user,
            reg_pos=reg_pos,
            reg_neg=reg_neg,
            user_dims=int(self.factors),
            threshold=self._threshold,
            step_scale=self._step_scale,
            negative_samples=int(self._p("negative_samples")),
        )

    def _epoch_record(self, report: EpochReport, learning_rate: float) -> dict[str, Any]:
        s = report.stats
        n = s["triples"]
        return {
            "iteration": report.epoch + 1,
            "objective": (s["loss"] + s["penalty"]) / n if n else float("nan"),
            "loss": s["loss"] / n if n else float("nan"),
            "auc": s["correct"] / n if n else float("nan"),
            "positives": int(n),
            "learning_rate": float(learning_rate),
            "seconds": float(report.seconds),
            "positives_per_second": float(n / report.seconds) if report.seconds > 0 else 0.0,
        }
