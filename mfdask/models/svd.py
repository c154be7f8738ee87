"""Biased matrix factorisation for explicit ratings (Funk SVD with Koren's biases)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import dask.dataframe as dd
import numpy as np
import pandas as pd

from mfdask._warnings import MfdaskWarning
from mfdask.data import schema
from mfdask.data.training import (
    InputError,
    TrainingData,
    as_training_data,
    count_ratings,
    map_ratings,
)
from mfdask.engine.dsgd import DSGD, Cell, Drawn, EpochReport, UserShard
from mfdask.engine.state import FactorBlocks
from mfdask.engine.trainer import FitResult, Objective, State
from mfdask.kernels.sgd import svd_predict, svd_sgd, svd_squared_error
from mfdask.models.base import (
    EpochCallback,
    FactorModel,
    ModelFileError,
    _check_positive_int,
)
from mfdask.models.incremental import block_extension, keep_blocks, keeps_blocks
from mfdask.models.sgd_state import dsgd_placement, initial_dsgd_state

LR_SCHEDULES = ("constant", "decay", "bold_driver")
UNKNOWN_POLICIES = ("error", "baseline")
MEMBER_FACTORS = 64
"""Factors per member of ``SVD(members=None)``."""


@dataclass(frozen=True)
class SVDStep:
    """The SVD loss as a DSGD block kernel (see :mod:`mfdask.engine.dsgd`).

    State: user and item blocks ``{"factors": (n, k) float32, "bias": (n,) float32}``.
    Statistics: ``sse`` (squared error) and ``n`` (ratings visited).
    """

    stat_names: ClassVar[tuple[str, ...]] = ("sse", "n")

    global_mean: float
    learning_rate: float
    bias_learning_rate: float
    regularization: float
    bias_regularization: float
    min_rating: float
    max_rating: float
    members: int = 1

    def train(
        self, cell: Cell, shard: UserShard, user: dict, item: dict, lo: int, hi: int, seed: int
    ) -> np.ndarray:
        sse = svd_sgd(
            cell.users,
            cell.items,
            cell.values,
            lo,
            hi,
            seed,
            user["factors"],
            item["factors"],
            user["bias"],
            item["bias"],
            self.global_mean,
            self.learning_rate,
            self.bias_learning_rate,
            self.regularization,
            self.bias_regularization,
            self.members,
        )
        return np.array([sse, hi - lo], dtype=np.float64)

    def evaluate(self, cell: Cell, shard: UserShard, user: dict, item: dict) -> np.ndarray:
        sse = svd_squared_error(
            cell.users,
            cell.items,
            cell.values,
            user["factors"],
            item["factors"],
            user["bias"],
            item["bias"],
            self.global_mean,
            self.min_rating,
            self.max_rating,
        )
        return np.array([sse, cell.nnz], dtype=np.float64)


class _SVDObjective(Objective):
    """The SVD fit for :class:`mfdask.engine.trainer.Trainer`.

    Checkpoint state: factors and biases, the best epoch's, the learning rates and epoch
    losses (the bold driver's memory), the sampling seed and the history. Every random
    stream is derived from ``(seed, epoch, block)``, so with one thread per cell a
    resumed or recovered fit equals an uninterrupted one bitwise.
    """

    name = "SVD"
    higher_is_better = False
    progress_keys = ("train_rmse", "validation_rmse")
    finite_keys = ("train_rmse",)

    def __init__(self, model: SVD, data: TrainingData, validation: Any) -> None:
        self.model, self.data, self.validation = model, data, validation
        self.validation_key = None if validation is None else "validation_rmse"
        # With a schedule fixed in advance the next epoch may be submitted before this
        # one is collected; the bold driver needs this epoch's loss first.
        self.looks_ahead = model.learning_rate_schedule != "bold_driver"
        self.shuffle_strata = bool(model.shuffle_strata)
        self.advice = (
            f"lower learning_rate (now {model.learning_rate}) or raise regularization "
            f"(now {model.regularization})"
        )
        self.rates: list[float] = []
        self.losses: list[float] = []

    def build(self, client: Any) -> DSGD:
        m, data = self.model, self.data
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
        m, data = self.model, self.data
        self.engine = engine
        summary = engine.value_summary()
        if summary["count"] == 0:
            raise InputError(f"no ratings to train on in {data.source}")
        m.global_mean_ = summary["mean"]
        m.rating_range_ = (summary["min"], summary["max"])
        m.seen_items_ = engine.seen if engine.seen is not None else engine.seen_items()
        identity = m._fit_identity(data, engine.digest(), engine.n_blocks)
        self.holdout = None
        if self.validation is not None:
            self.holdout = m._place_validation(engine, self.validation)
        return identity

    def initial_state(self, rng: np.random.Generator) -> tuple[State, State]:
        return initial_dsgd_state(self.model, self.data, rng, self.engine.n_blocks)

    def kernel(self, iteration: int) -> SVDStep:
        return self.model._step(self.model._rate(iteration, self.losses, self.rates))

    def record(self, iteration: int, report: EpochReport) -> dict[str, Any]:
        rate = self.model._rate(iteration, self.losses, self.rates)  # what kernel() used
        self.rates.append(rate)
        self.losses.append(report.stats["sse"] / max(report.stats["n"], 1))
        return {
            "iteration": iteration + 1,
            "learning_rate": self.rates[iteration],
            "train_rmse": math.sqrt(self.losses[-1]),
        }

    def validate(self, iteration: int, current: Any) -> float:
        scored = self.engine.evaluate(self.model._step(self.rates[iteration]), self.holdout)
        return math.sqrt(scored["sse"] / max(scored["n"], 1))

    def state(self) -> dict[str, Any]:
        return {"rates": self.rates, "losses": self.losses}

    def load_state(self, state: dict[str, Any] | None) -> None:
        self.rates[:] = [] if state is None else state["rates"]
        self.losses[:] = [] if state is None else state["losses"]

    def finish(self, result: FitResult) -> None:
        m = self.model
        if result.early_stopping:
            m.metrics_["best_iteration"] = (result.best_iteration or 0) + 1
            m.metrics_["validation_rmse"] = result.best_score
        elif result.best_score is not None:
            m.metrics_["validation_rmse"] = m.history_[-1]["validation_rmse"]
        m.user_factors_, m.user_bias_ = result.user["factors"], result.user["bias"]
        m.item_factors_, m.item_bias_ = result.item["factors"], result.item["bias"]
        if self.engine.seen is not None:  # placed again if a worker was lost
            m.seen_items_ = self.engine.seen
        keep_blocks(m, self.data, self.engine, "rating")
        m.metrics_["train_rmse"] = m.history_[-1]["train_rmse"]
        m.metrics_["iterations_run"] = len(m.history_)
        m.metrics_["n_ratings"] = self.engine.nnz


def _remap_partition(
    part: pd.DataFrame, user_map: np.ndarray, item_map: np.ndarray
) -> pd.DataFrame:
    """Translate dense indices of another id space into the model's; drop unknown ids."""
    u = user_map[part[schema.USER_IDX].to_numpy()]
    i = item_map[part[schema.ITEM_IDX].to_numpy()]
    keep = (u >= 0) & (i >= 0)
    return pd.DataFrame(
        {
            schema.USER_IDX: u[keep].astype("int32"),
            schema.ITEM_IDX: i[keep].astype("int32"),
            schema.RATING: part[schema.RATING].to_numpy()[keep],
        }
    )


class SVD(FactorModel):
    """Biased matrix factorisation of explicit ratings, trained by distributed SGD.

    The model of the Netflix Prize (Funk 2006; Koren, Bell & Volinsky, "Matrix
    factorization techniques for recommender systems", IEEE Computer 2009, eq. 4-5)
    predicts a rating as

        r̂_ui = mu + b_u + b_i + p_uᵀ q_i

    with ``mu`` the global mean, ``b_u``/``b_i`` user and item biases and ``p_u``/``q_i``
    ``factors``-dimensional vectors, and minimises the squared error on the observed
    ratings plus ``regularization · (|p_u|² + |q_i|²)`` and, separately,
    ``bias_regularization · (b_u² + b_i²)``. Use it to predict rating values (RMSE) or to
    rank by predicted rating; for implicit feedback use ``ALS``, ``BPR`` or ``WARP``.

    Training is stochastic gradient descent, one rating at a time (the update rules are
    in :mod:`mfdask.kernels.sgd`), distributed as DSGD (Gemulla et al., KDD 2011): the
    rating matrix is cut into ``n_blocks x n_blocks`` cells and each sub-epoch trains a
    stratum of cells that share no rows on all workers at once, with ``n_threads``
    Hogwild threads per cell (:mod:`mfdask.engine.dsgd`).

    Learning rate per epoch ``e``: ``"constant"``; ``"decay"``:
    ``learning_rate · learning_rate_decay^e``; ``"bold_driver"`` (Battiti 1989, as Gemulla et al.
    use it): after an epoch whose training loss fell, multiply by 1.05, otherwise halve.
    The bias rate follows the same schedule.

    Differences from Surprise's ``SVD``: biases start at 0 and factors at
    ``N(0, init_scale²)`` drawn by global row index (so the blocking does not change the
    start); biases have their own learning rate and regularisation; predictions are
    clipped to the training rating range; with ``validation`` the fit stops early and
    keeps the best epoch. With ``n_threads=1`` a fit is reproducible for a given
    ``random_state`` and cluster shape; more threads add Hogwild races (same quality, not
    bitwise equal).

    The defaults were chosen on a validation split carved from the training part of a
    random 90/10 split of MovieLens-1M at 64 factors (``benchmarks/bench_svd.py``; the
    test part was not used): a larger step that decays faster (0.02, ×0.95 per epoch)
    reaches in 40 epochs the validation RMSE that 0.01 with ×0.97 reached in 70, and a
    smaller bias step (0.005) gains a little more. The initial scale matters most:
    factors that start small (0.03, against 0.1) leave the first epochs to the biases
    and let the factors grow only along directions the ratings support, which took the
    validation RMSE from 0.851 to 0.846 (with λ = 0.055 and 50 epochs; 0.01-0.02 start
    too small, 0.05 gains half as much). Separate user and item regularisation,
    count-weighted regularisation (λ·n^α for α in 0.25-0.75, after Salakhutdinov and
    Srebro, NIPS 2010) and averaging the last epochs' iterates did not do better there.

    Parameters
    ----------
    factors : int
        Latent dimension ``k`` of the fitted model (of ``user_factors_``), all members'
        factors together.
    members : int or None
        Train the ``factors`` as this many factor models of ``factors / members``
        dimensions side by side (it must divide ``factors``), sharing the biases and the
        rating order: each member steps on its own error, the biases on the mean error,
        and the fitted model predicts the members' mean (the members' factors are stored
        scaled by ``1 / √members``, so ``p_uᵀ q_i`` is that mean and prediction,
        ranking, saving and fold-in work as for one model). None: the most members of at
        least 64 factors each that divide ``factors`` (1 up to 127 factors: one plain
        model). A fit costs what one model of ``factors`` dimensions costs.
    learning_rate : float
        γ, the factor step at epoch 0.
    regularization : float
        λ on the factors.
    bias_learning_rate : float or None
        γ_b; None uses ``learning_rate``.
    bias_regularization : float or None
        λ_b; None uses ``regularization``. Biases are regularised less than factors:
        each has one degree of freedom and is estimated from all of a row's ratings.
    epochs : int
        Passes over the ratings (fewer with early stopping).
    init_scale : float
        Standard deviation of the initial factors.
    learning_rate_schedule : {"constant", "decay", "bold_driver"}
        (``lr_schedule`` before 0.1: still accepted, with a ``DeprecationWarning``.)
    learning_rate_decay : float
        Per-epoch factor for ``learning_rate_schedule="decay"`` (``lr_decay`` before 0.1).
        BPR and WARP use the same name for their inverse-time decay
        ``learning_rate / (1 + learning_rate_decay · e)``: the same knob (how fast the
        step shrinks), each model's usual form of it.
    early_stopping_rounds : int or None
        With ``validation``: stop after this many epochs without a better validation
        RMSE and keep the best epoch. None trains every epoch (and still reports it).
    random_state : int or None
        Seed of the initial factors, the rating order and the strata.
        Default 0 in every model, so that a job run twice gives the same model; None
        draws fresh entropy (kept for a restart within the fit).
    n_blocks : int or None
        ``B`` of the ``B x B`` cells; None is one per worker.
    n_threads : int or None
        Hogwild threads per cell; None uses the worker's threads.
    shuffle_strata : bool
        Draw a new stratum order every epoch.
    show_progress : bool
        A progress bar over epochs with the training RMSE.
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
    user_bias_ : (n_users,) float32
    item_bias_ : (n_items,) float32
    global_mean_ : float
    rating_range_ : (float, float)
        Training minimum and maximum: predictions are clipped to it.
    history_ : list of dict
        Per epoch: ``iteration`` (the epoch, 1-based; ``epoch`` before 0.1),
        ``learning_rate``, ``train_rmse`` (running error of the pass), ``validation_rmse``
        with ``validation``, ``seconds``.
    """

    model_name: ClassVar[str] = "svd"
    regularization: float  # always given (the base allows None for the implicit models)
    implicit: ClassVar[bool] = False
    renamed_params: ClassVar[dict[str, str]] = {
        "lr_schedule": "learning_rate_schedule",
        "lr_decay": "learning_rate_decay",
    }
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "learning_rate": {"low": 0.003, "high": 0.06, "log": True},
        "regularization": {"low": 0.005, "high": 0.3, "log": True},
    }
    """What :func:`mfdask.tune` searches by default (``epochs`` is the budget)."""
    params_before: ClassVar[dict[str, Any]] = {"members": 1}
    """A model saved before ``members`` existed was one model of all its factors."""

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.02,
        regularization: float = 0.055,
        bias_learning_rate: float | None = 0.005,
        bias_regularization: float | None = 0.01,
        epochs: int = 50,
        init_scale: float = 0.03,
        learning_rate_schedule: str = "decay",
        learning_rate_decay: float = 0.95,
        early_stopping_rounds: int | None = 3,
        random_state: int | None = 0,
        n_blocks: int | None = None,
        n_threads: int | None = None,
        shuffle_strata: bool = True,
        show_progress: bool = False,
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 5,
        members: int | None = None,
        **renamed: Any,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.bias_learning_rate = bias_learning_rate
        self.bias_regularization = bias_regularization
        self.epochs = epochs
        self.init_scale = init_scale
        self.learning_rate_schedule = learning_rate_schedule
        self.learning_rate_decay = learning_rate_decay
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.n_blocks = n_blocks
        self.n_threads = n_threads
        self.shuffle_strata = shuffle_strata
        self.show_progress = show_progress
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.members = members
        self._take_renamed(renamed)  # lr_schedule, lr_decay: the names before 0.1

    # ------------------------------------------------------------------ parameters
    def _validate_params(self) -> None:
        _check_positive_int("factors", self.factors)
        _check_positive_int("epochs", self.epochs)
        if self.members is not None:
            _check_positive_int("members", self.members)
        if int(self.factors) % self._members:
            raise ValueError(
                f"factors ({self.factors}) must be a multiple of members ({self.members})"
            )
        for name in ("n_threads", "n_blocks", "early_stopping_rounds"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        for name in ("learning_rate", "init_scale", "learning_rate_decay", "bias_learning_rate"):
            value = getattr(self, name)
            if value is None and name == "bias_learning_rate":
                continue
            if not _finite(value) or value <= 0:
                raise ValueError(
                    f"{self._given_name(name)} must be a finite number > 0, got {value!r}"
                )
        for name in ("regularization", "bias_regularization"):
            value = getattr(self, name)
            if value is None and name == "bias_regularization":
                continue
            if not _finite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.learning_rate_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"{self._given_name('learning_rate_schedule')} must be one of "
                f"{list(LR_SCHEDULES)}, got {self.learning_rate_schedule!r}"
            )
        if self.random_state is not None and not isinstance(self.random_state, (int, np.integer)):
            raise ValueError(f"random_state must be an int or None, got {self.random_state!r}")

    @property
    def _members(self) -> int:
        """``members``, or with None the most members of at least
        :data:`MEMBER_FACTORS` factors each that divide ``factors`` (at least 1)."""
        if self.members is not None:
            return int(self.members)
        k = int(self.factors)
        m = max(1, k // MEMBER_FACTORS)
        while k % m:
            m -= 1
        return m

    @property
    def _member_init_scale(self) -> float:
        """The stored factors' start: each member's ``init_scale`` times ``1 / √members``."""
        return float(self.init_scale) / math.sqrt(self._members)

    @property
    def _lr_b(self) -> float:
        return float(
            self.learning_rate if self.bias_learning_rate is None else self.bias_learning_rate
        )

    @property
    def _reg_b(self) -> float:
        return float(
            self.regularization if self.bias_regularization is None else self.bias_regularization
        )

    # ------------------------------------------------------------------ fitting
    def _initial_state(self, data: TrainingData, rng: np.random.Generator) -> tuple[dict, dict]:
        """Factors ``N(0, init_scale²)`` by global row (users, then items); biases 0."""
        k, scale = self.factors, np.float32(self._member_init_scale)
        user = {
            "factors": rng.standard_normal((data.n_users, k), dtype=np.float32) * scale,
            "bias": np.zeros(data.n_users, dtype=np.float32),
        }
        item = {
            "factors": rng.standard_normal((data.n_items, k), dtype=np.float32) * scale,
            "bias": np.zeros(data.n_items, dtype=np.float32),
        }
        return user, item

    def _drawn_state(self, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`_initial_state`'s distribution drawn on the workers by global row."""
        k, scale = int(self.factors), float(self._member_init_scale)
        user = {"factors": Drawn(k, normal=k, scale=scale, seed=seed), "bias": Drawn(0)}
        item = {"factors": Drawn(k, normal=k, scale=scale, seed=seed + 1), "bias": Drawn(0)}
        return user, item

    def _fit(self, data: TrainingData, validation: Any, callback: EpochCallback | None) -> None:
        self._run_trainer(_SVDObjective(self, data, validation), self.epochs, "epoch", callback)

    def _rate(self, epoch: int, losses: list[float], rates: list[float]) -> float:
        """The factor learning rate of ``epoch`` under ``learning_rate_schedule``.

        ``losses`` are the mean squared errors of the epochs so far (bold driver).
        """
        if self.learning_rate_schedule == "constant":
            return float(self.learning_rate)
        if self.learning_rate_schedule == "decay":
            return float(self.learning_rate * self.learning_rate_decay**epoch)
        if epoch < 2:  # bold driver: needs two losses to compare
            return float(self.learning_rate)
        return rates[-1] * (1.05 if losses[-1] < losses[-2] else 0.5)

    def _step(self, rate: float) -> SVDStep:
        scale = rate / float(self.learning_rate)
        return SVDStep(
            global_mean=float(self.global_mean_),
            learning_rate=rate,
            bias_learning_rate=self._lr_b * scale,
            regularization=float(self.regularization),
            bias_regularization=self._reg_b,
            min_rating=float(self.rating_range_[0]),
            max_rating=float(self.rating_range_[1]),
            members=self._members,
        )

    def _place_validation(self, engine: DSGD, validation: Any) -> list:
        """Held-out ratings in the model's index space, placed next to the training cells."""
        vdata = as_training_data(validation)
        ratings = vdata.ratings
        if vdata.fingerprint != self.fingerprint_:
            user_map = self.user_ids_.get_indexer(vdata.user_ids).astype(np.int64)
            item_map = self.item_ids_.get_indexer(vdata.item_ids).astype(np.int64)
            ratings = map_ratings(ratings, _remap_partition, user_map, item_map)
        total = count_ratings(vdata.ratings)
        shards = engine.place_holdout(ratings)
        placed = int(engine.value_summary(shards)["count"])
        self.metrics_["validation_ratings"] = placed
        if placed < total:
            warnings.warn(
                f"{total - placed} of {total} validation ratings have a user or item absent "
                "from the training data and are left out of validation_rmse",
                MfdaskWarning,
                stacklevel=8,
            )
        if placed == 0:
            raise InputError("no validation rating has a user and an item seen in training")
        return shards

    # ------------------------------------------------------------------ prediction
    def predict_indices(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings for dense ``(users[n], items[n])`` pairs, clipped to the range.

        Returns
        -------
        (n,) float32
        """
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(
                f"users and items must be 1-d and of equal length, got {users.shape} "
                f"and {items.shape}"
            )
        for name, idx, n in (("user", users, self.n_users), ("item", items, self.n_items)):
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"{name} indices must lie in 0..{n - 1}")
        held = self.__dict__.get("_user_factors")
        user_factors: np.ndarray
        if isinstance(held, FactorBlocks):  # only the rows asked for
            known, users = np.unique(users, return_inverse=True)
            user_factors = held.take(known)
            user_bias = self.user_bias_[known]
        else:
            user_factors, user_bias = self.user_factors_, self.user_bias_
        return svd_predict(
            users,
            items,
            user_factors,
            self.item_factors_,
            user_bias,
            self.item_bias_,
            float(self.global_mean_),
            float(self.rating_range_[0]),
            float(self.rating_range_[1]),
        )

    def predict(self, pairs: pd.DataFrame | dd.DataFrame, unknown: str = "error") -> np.ndarray:
        """Predicted ratings for a DataFrame of ``user_id, item_id`` pairs (original ids).

        Parameters
        ----------
        pairs : pandas DataFrame
            Columns ``user_id`` and ``item_id``; other columns are ignored.
        unknown : {"error", "baseline"}
            What to do with ids not seen in training: raise :class:`UnknownIdError`, or
            predict the baseline ``mu + b_u + b_i`` with the unknown side's bias (and the
            dot product) taken as 0, as Surprise does.

        Returns
        -------
        (len(pairs),) float32
            Aligned with the rows of ``pairs``, clipped to the training rating range.
        """
        self._check_fitted()
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {list(UNKNOWN_POLICIES)}, got {unknown!r}")
        if isinstance(pairs, dd.DataFrame):
            raise InputError(
                "predict takes a pandas DataFrame; for a Dask DataFrame use "
                "pairs.map_partitions(model.predict, meta=('rating', 'f4'))"
            )
        missing = [c for c in (schema.USER_ID, schema.ITEM_ID) if c not in pairs.columns]
        if missing:
            raise InputError(
                f"pairs are missing column(s) {missing}; they have {list(pairs.columns)}"
            )
        if unknown == "error":
            return self.predict_indices(
                self.user_index(pairs[schema.USER_ID]), self.item_index(pairs[schema.ITEM_ID])
            )
        u = self.user_ids_.get_indexer(pd.Index(pairs[schema.USER_ID]))
        i = self.item_ids_.get_indexer(pd.Index(pairs[schema.ITEM_ID]))
        known = (u >= 0) & (i >= 0)
        out = np.empty(len(pairs), dtype=np.float32)
        out[known] = self.predict_indices(u[known], i[known])
        cold = ~known
        base = np.full(int(cold.sum()), self.global_mean_, dtype=np.float32)
        base += np.where(u[cold] >= 0, self.user_bias_[np.maximum(u[cold], 0)], 0)
        base += np.where(i[cold] >= 0, self.item_bias_[np.maximum(i[cold], 0)], 0)
        out[cold] = np.clip(base, *self.rating_range_)
        return out

    # ------------------------------------------------------------------ scoring
    def _score_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``[p_u, 1, mu + b_u]`` and ``[q_i, b_i, 1]``: their dot is the predicted rating."""
        users = np.arange(self.user_factors_.shape[0])
        uvec = np.hstack([self.user_factors_, self._user_score_extra(users)])
        return uvec.astype(np.float32), self._item_score_vectors()

    def _user_block_copy(self, rows: np.ndarray) -> SVD:
        light = super()._user_block_copy(rows)
        assert isinstance(light, SVD)
        light.user_bias_ = np.ascontiguousarray(self.user_bias_[rows])
        return light

    def _user_score_extra(self, users: np.ndarray) -> np.ndarray:
        """``[1, mu + b_u]`` per user."""
        mu_b = (self.global_mean_ + self.user_bias_[users]).astype(np.float32)
        return np.column_stack([np.ones(len(users), np.float32), mu_b])

    def _item_score_vectors(self) -> np.ndarray:
        n_i = self.item_factors_.shape[0]
        ivec = np.hstack([self.item_factors_, self.item_bias_[:, None], np.ones((n_i, 1))])
        return ivec.astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def _extra_user_columns(self) -> dict[str, np.ndarray]:
        return {"bias": self.user_bias_}

    def _extra_item_columns(self) -> dict[str, np.ndarray]:
        return {"bias": self.item_bias_}

    def _extra_state(self) -> dict[str, Any]:
        return {
            "global_mean": float(self.global_mean_),
            "rating_min": float(self.rating_range_[0]),
            "rating_max": float(self.rating_range_[1]),
        }

    def _restore(
        self,
        user_extra: dict[str, np.ndarray],
        item_extra: dict[str, np.ndarray],
        state: dict[str, Any],
    ) -> None:
        try:
            self.user_bias_ = user_extra["bias"].astype(np.float32)
            self.item_bias_ = item_extra["bias"].astype(np.float32)
            self.global_mean_ = float(state["global_mean"])
            self.rating_range_ = (float(state["rating_min"]), float(state["rating_max"]))
        except KeyError as exc:
            raise ModelFileError(
                f"saved SVD model lacks its biases or global mean ({exc}): it is incomplete; "
                "save the model again"
            ) from exc


def _finite(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.floating, np.integer))
        and not isinstance(value, bool)
        and bool(np.isfinite(value))
    )
