"""Hyper-parameter search on the cluster: :func:`tune` (Optuna's TPE, median pruning).

A search is many fits of one model on the same data, so the data is prepared once:

1. ``train`` is read and indexed once (:func:`~mfdask.data.training.as_training_data`).
2. Unless ``validation`` is given, a validation part is carved from it with the split
   rules of :mod:`mfdask.data.split` (per-user holdout of ``validation_fraction`` of each
   user's positives for the ranking models, a random ``validation_fraction`` of the
   ratings for SVD), deterministically from ``random_state``; the id maps stay those of
   ``train``, so the winner refits on all of ``train`` with the same users and items.
3. The training and validation ratings are persisted on the workers once. Every trial's
   fit reads its ratings from there (its engine still cuts them into its own blocks), and
   the ranking models' validation ratings are placed in user blocks once, on the first
   trial, by one :class:`~mfdask.evaluate.RankingEvaluator` that every trial shares
   (SVD's held-out ratings are cut per fit next to that fit's DSGD cells, from the
   persisted copy).

Each trial is one fit with parameters drawn by Optuna's multivariate TPE sampler
(seeded by ``random_state``) from the model's ``search_space`` (log-uniform for
regularization, learning rates and ``alpha``). The first trial is the estimator's own
point (``start_from_estimator``: its values of the searched parameters, the model's
defaults for the data's feedback where left None), so the search starts from a known
point and never ends below its validation score. The fit reports its validation metric after every
iteration through an :func:`~mfdask.engine.trainer.iteration_hook`; Optuna's median
pruner stops trials whose curve falls below the median of earlier trials at the same
iteration, and the trainer ends a pruned fit the way it ends an early-stopped one. A trial
whose fit diverges (:class:`~mfdask.errors.ModelFitError`) is recorded as failed and the
search goes on. A trial's score is its best iteration's; ``best_params`` carries that
iteration count (``iterations`` or ``epochs``), so ``set_params(**best_params)`` gives the
fit the search scored (up to the extra data of the refit).

Trials run concurrently when the cluster has room: with ``workers_per_trial`` (default:
the estimator's ``n_blocks``, else every worker) smaller than half the workers, the
workers are cut into groups and each group runs one fit at a time
(:func:`~mfdask.engine.cluster.worker_group`); otherwise trials run one after another.
Concurrent trials see the results of fewer earlier trials when they are drawn, so the
search is not reproducible trial for trial; one after another it is (same seed, data and
cluster shape).

Optuna is an optional dependency: ``pip install 'mfdask[tune]'``.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from mfdask._progress import progress_bar
from mfdask.data import schema
from mfdask.data.dataset import Dataset, is_dataset, open_dataset
from mfdask.data.implicit import positive_cut
from mfdask.data.split import DEFAULT_MIN_POSITIVES, assign_test
from mfdask.data.training import LocalRatings, TrainingData, as_training_data
from mfdask.engine.cluster import live_workers, session, worker_group
from mfdask.engine.trainer import IterationEvent, iteration_hook
from mfdask.errors import ModelFitError, OptunaMissingError
from mfdask.evaluate import RankingEvaluator
from mfdask.models.base import VALIDATION_METRICS, FactorModel

INSTALL_HINT = "pip install 'mfdask[tune]'"

RATING_METRICS = ("rmse",)
"""What an explicit-rating model (SVD) can be tuned on: its per-epoch validation RMSE."""

ITERATION_PARAMS = ("iterations", "epochs")
"""Names of the iteration budget, one per model."""

FAILED_ERRORS: tuple[type[BaseException], ...] = (ModelFitError, FloatingPointError, ValueError)
"""Exceptions that fail a trial (recorded, the search goes on) rather than the search."""

_SALT = 0x7E
"""Added to the split depth: a validation carved here draws other keys than any split."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise OptunaMissingError(
            f"mfdask.tune needs Optuna, which is not installed: {INSTALL_HINT} "
            "(or pip install 'optuna>=3.4')"
        ) from exc
    return optuna


# ---------------------------------------------------------------------------- result
@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes
    ----------
    best_params : dict
        The best trial's parameters (the searched ones and the iteration count of its
        best iteration): ``estimator.set_params(**best_params)`` takes them.
    best_score : float
        Its validation score (``metric`` at ``k``; RMSE for SVD).
    metric : str
        ``"ndcg"``, ..., or ``"rmse"``.
    higher_is_better : bool
    trials : DataFrame
        One row per trial: ``number, state`` (``COMPLETE``, ``PRUNED``, ``FAIL``),
        ``score`` (a pruned trial's: its best before it was stopped), one column per
        searched parameter, ``iterations`` (run),
        ``best_iteration``, ``seconds``, ``start`` (seconds into the search), ``group``
        (the worker group it ran on), ``source`` (``"estimator"`` for the trial of the
        estimator's own values, else ``"sampler"``) and ``error`` (why a trial failed).
    seconds : float
        Wall time of the search (preparation included).
    validation : dict
        Where the validation data came from and its size.
    concurrency : int
        Trials run at the same time (worker groups).
    study : optuna.Study
        The study itself, for Optuna's own plots.
    """

    best_params: dict[str, Any]
    best_score: float
    metric: str
    higher_is_better: bool
    trials: pd.DataFrame
    seconds: float
    validation: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 1
    study: Any = None

    def plot(self, path: str | os.PathLike[str]) -> Path | None:
        """Score per trial and the best so far, as a PNG (:func:`mfdask.report.plot_trials`)."""
        from mfdask.report import plot_trials

        return plot_trials(self.trials, path, self.metric, self.higher_is_better)

    def summary(self) -> str:
        states = self.trials["state"].value_counts().to_dict() if len(self.trials) else {}
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        params = ", ".join(f"{k}={_short(v)}" for k, v in self.best_params.items())
        return (
            f"{len(self.trials)} trials ({counts}) in {self.seconds:.1f} s, "
            f"{self.concurrency} at a time; best {self.metric} {self.best_score:.4f}: {params}"
        )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


# ---------------------------------------------------------------------------- search space
def _check_space(cls: type[FactorModel], space: dict[str, dict[str, Any]]) -> None:
    valid = set(cls._param_names())
    if not space:
        raise ValueError(f"{cls.__name__} declares no search space: pass search_space=")
    for name, spec in space.items():
        if name not in valid:
            raise ValueError(
                f"search_space names {name!r}, which is not a {cls.__name__} parameter; "
                f"valid: {sorted(valid)}"
            )
        if not isinstance(spec, dict) or not ("choices" in spec or {"low", "high"} <= set(spec)):
            raise ValueError(
                f"search_space[{name!r}] must be {{'low': a, 'high': b[, 'log': True]}} "
                f"or {{'choices': [...]}}, got {spec!r}"
            )
        if "choices" not in spec and not spec["low"] < spec["high"]:
            raise ValueError(f"search_space[{name!r}]: low must be below high, got {spec!r}")
        if spec.get("log") and "choices" not in spec and spec["low"] <= 0:
            raise ValueError(f"search_space[{name!r}]: a log range needs low > 0, got {spec!r}")


def _suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            out[name] = trial.suggest_int(
                name, spec["low"], spec["high"], log=bool(spec.get("log"))
            )
        else:
            out[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log"))
            )
    return out


def _estimator_point(
    estimator: FactorModel, feedback: str, space: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The estimator's own values of the searched parameters that lie in ``space``.

    Values left None are resolved for ``feedback`` (the model's defaults for that kind of
    data); a value outside its range or choices is left out (the sampler draws it).
    """
    params = estimator.resolved_params(feedback)
    point: dict[str, Any] = {}
    for name, spec in space.items():
        value = params.get(name)
        if value is None or (isinstance(value, bool) and "choices" not in spec):
            continue
        if "choices" in spec:
            if value in list(spec["choices"]):
                point[name] = value
        elif isinstance(value, (int, float)) and spec["low"] <= value <= spec["high"]:
            ints = isinstance(spec["low"], int) and isinstance(spec["high"], int)
            point[name] = int(value) if ints else float(value)
    return point


# ---------------------------------------------------------------------------- data
def _mark_partition(part: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """The ratings of whole users with a boolean ``_validation`` column (split rules)."""
    ts = (
        part[schema.TIMESTAMP].to_numpy()
        if schema.TIMESTAMP in part.columns
        else np.zeros(len(part), np.int64)
    )
    mask = assign_test(
        part[schema.USER_IDX].to_numpy(),
        part[schema.ITEM_IDX].to_numpy(),
        part[schema.RATING].to_numpy(),
        ts,
        **params,
    )
    out = part[[schema.USER_IDX, schema.ITEM_IDX, schema.RATING]].reset_index(drop=True)
    out["_validation"] = mask
    return out


def _take(part: pd.DataFrame, validation: bool) -> pd.DataFrame:
    keep = part["_validation"].to_numpy() == validation
    return part.loc[keep, [schema.USER_IDX, schema.ITEM_IDX, schema.RATING]].reset_index(drop=True)


def _to_original(part: pd.DataFrame, user_ids: pd.Index, item_ids: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(
        {
            schema.USER_ID: user_ids.to_numpy()[part[schema.USER_IDX].to_numpy()],
            schema.ITEM_ID: item_ids.to_numpy()[part[schema.ITEM_IDX].to_numpy()],
            schema.RATING: part[schema.RATING].to_numpy(),
        }
    )


_DENSE_META = pd.DataFrame(
    {
        schema.USER_IDX: pd.Series([], dtype="int32"),
        schema.ITEM_IDX: pd.Series([], dtype="int32"),
        schema.RATING: pd.Series([], dtype="float32"),
    }
)


def _user_partitions(train: Any, data: TrainingData) -> tuple[dd.DataFrame, int]:
    """Dense ratings with every user's rows in one partition, and the split depth."""
    if isinstance(train, (str, os.PathLike)) and is_dataset(train):
        train = open_dataset(train)
    if isinstance(train, Dataset):
        from mfdask.data.split import user_block_frame

        parent = train.manifest.get("split")
        depth = int(parent.get("depth", 0)) + 1 if isinstance(parent, dict) else 0
        return user_block_frame(train), depth
    ratings = data.ratings
    if isinstance(ratings, LocalRatings):
        frame = ratings.frame
        n = max(1, math.ceil(len(frame) / 1_000_000))
        if n == 1:
            return dd.from_pandas(frame, npartitions=1), 0
        ratings = dd.from_pandas(frame, npartitions=n)
    return ratings.shuffle(on=schema.USER_IDX), 0


@dataclass
class _Prepared:
    train: TrainingData
    validation: Any  # a shared RankingEvaluator, or TrainingData for SVD
    info: dict[str, Any]
    keep: list[Any]  # persisted collections, released at the end


def _persisted(client: Any, frames: list[dd.DataFrame]) -> list[dd.DataFrame]:
    out = client.persist(frames)
    from distributed import wait

    with client.as_current():
        wait(out)
    return list(out)


def _prepare(
    client: Any,
    estimator: FactorModel,
    train: Any,
    validation: Any,
    *,
    k: int,
    fraction: float,
    seed: int,
) -> _Prepared:
    data = as_training_data(train)
    ranking = bool(type(estimator).implicit)
    threshold = positive_cut(
        data.feedback,
        float(getattr(estimator, "positive_threshold", schema.DEFAULT_POSITIVE_THRESHOLD)),
    )
    if validation is None:
        frame, depth = _user_partitions(train, data)
        params = {
            "method": "user_holdout" if ranking else "random",
            "fraction": float(fraction),
            "seed": int(seed),
            "positive_threshold": threshold,
            "min_positives": DEFAULT_MIN_POSITIVES,
            "depth": depth + _SALT,
        }
        marked = frame.map_partitions(
            _mark_partition, params, meta=_DENSE_META.assign(_validation=pd.Series([], dtype=bool))
        )
        fit_part = marked.map_partitions(_take, False, meta=_DENSE_META)
        held = marked.map_partitions(_take, True, meta=_DENSE_META)
        if ranking:
            held = held.map_partitions(
                _to_original,
                dask.delayed(data.user_ids, pure=True),
                dask.delayed(data.item_ids, pure=True),
                meta=pd.DataFrame(
                    {
                        schema.USER_ID: pd.Series([], dtype=data.user_ids.dtype),
                        schema.ITEM_ID: pd.Series([], dtype=data.item_ids.dtype),
                        schema.RATING: pd.Series([], dtype="float32"),
                    }
                ),
            )
        fit_part, held = _persisted(client, [fit_part, held])
        n_fit, n_held = dask.compute(fit_part.map_partitions(len).sum(), held.shape[0])
        if int(n_held) == 0:
            raise ValueError(
                f"carving a validation part from {data.source} left it empty "
                f"({params['method']}, fraction {fraction}): pass validation= or use more data"
            )
        info = {
            "source": f"carved from train ({params['method']}, fraction {fraction}, seed {seed})",
            "train_ratings": int(n_fit),
            "validation_ratings": int(n_held),
        }
        train_data = TrainingData(
            ratings=fit_part,
            user_ids=data.user_ids,
            item_ids=data.item_ids,
            items=data.items,
            fingerprint=data.fingerprint,
            source=f"{data.source} (tuning part)",
            feedback=data.feedback,
        )
        keep: list[Any] = [fit_part, held]
        if ranking:
            shared: Any = _SharedRanking(held, k=k, positive_threshold=threshold, client=client)
        else:
            shared = TrainingData(
                ratings=held,
                user_ids=data.user_ids,
                item_ids=data.item_ids,
                items=None,
                fingerprint=data.fingerprint,
                source="validation carved from train",
                feedback=data.feedback,
            )
        return _Prepared(train_data, shared, info, keep)
    # Validation given: persist the training ratings once; the validation as given.
    ratings = data.ratings
    if isinstance(ratings, LocalRatings):
        n = max(1, math.ceil(len(ratings.frame) / 1_000_000))
        ratings = dd.from_pandas(ratings.frame, npartitions=n)
    [persisted] = _persisted(client, [ratings])
    train_data = TrainingData(
        ratings=persisted,
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        items=data.items,
        fingerprint=data.fingerprint,
        source=data.source,
        feedback=data.feedback,
    )
    info = {"source": "given"}
    if ranking:
        shared = _SharedRanking(validation, k=k, positive_threshold=threshold, client=client)
    else:
        shared = as_training_data(validation)
    return _Prepared(train_data, shared, info, [persisted])


class _SharedRanking(RankingEvaluator):
    """A :class:`RankingEvaluator` placed by the first trial that scores, then shared.

    Every trial fits the same training data, so the id maps and the seen items the
    placement depends on are the same for all of them. Placed on every worker (not only
    the first trial's group).
    """

    def __init__(self, test: Any, *, k: int, positive_threshold: float, client: Any) -> None:
        self.client = client
        self.test = test
        self.k = int(k)
        self.positive_threshold = positive_threshold
        self.filter_seen = True
        self.n_blocks = None
        from mfdask.evaluate import EVAL_CHUNK_CELLS

        self.chunk_cells = EVAL_CHUNK_CELLS
        self._placed = None
        self._lock = threading.Lock()
        self.placements = 0

    def _place(self, model: FactorModel) -> Any:
        with worker_group(live_workers(self.client)):
            placed = super()._place(model)
        self.placements += 1
        return placed

    def score(self, model: FactorModel) -> dict[str, float]:
        with self._lock:
            if self._placed is None:
                self._place(model)
        return super().score(model)


# ---------------------------------------------------------------------------- sampler
def _sampler(optuna: Any, seed: int, n_trials: int) -> Any:
    """TPE with a third of the trials (2 to 10) drawn at random first, multivariate.

    The multivariate TPE (Falkner et al.'s joint density instead of one per parameter)
    follows parameters that only make sense together, such as ALS's ``λ`` and the
    exponent of the count it is scaled by; Optuna marks the option experimental, so its
    warning is silenced here.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=min(10, max(2, n_trials // 3)),
            multivariate=True,
        )


# ---------------------------------------------------------------------------- groups
def _groups(client: Any, estimator: FactorModel, workers_per_trial: int | None) -> list[list[str]]:
    workers = live_workers(client)
    size = workers_per_trial
    if size is None:
        blocks = getattr(estimator, "n_blocks", None)
        size = int(blocks) if blocks is not None and blocks < len(workers) else len(workers)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"workers_per_trial must be a positive integer, got {size!r}")
    size = min(size, len(workers))
    n = len(workers) // size
    return [workers[g * size : (g + 1) * size] for g in range(n)]


# ---------------------------------------------------------------------------- tune
def tune(
    estimator: FactorModel,
    train: Any,
    *,
    n_trials: int,
    timeout: float | None = None,
    metric: str = "ndcg",
    k: int = 10,
    validation: Any = None,
    search_space: dict[str, dict[str, Any]] | None = None,
    random_state: int = 0,
    validation_fraction: float = 0.2,
    workers_per_trial: int | None = None,
    pruning: bool = True,
    start_from_estimator: bool = True,
    show_progress: bool = False,
) -> TuneResult:
    """Search ``estimator``'s hyper-parameters on a validation part of ``train``.

    See the module docstring for how the data is shared between trials.

    Parameters
    ----------
    estimator : FactorModel
        An unfitted model; its parameters are the fixed ones (``factors``, the iteration
        budget ``iterations`` / ``epochs``, ...). Left unchanged.
    train
        What ``fit`` accepts (a dataset path, a pandas or Dask DataFrame).
    n_trials : int
        Trials to run (fewer if ``timeout`` ends the search).
    timeout : float, optional
        Seconds after which no new trial starts.
    metric : str
        Ranking models: a key of :func:`mfdask.evaluate.evaluate_ranking` at cut-off
        ``k`` (higher is better). SVD: ``"rmse"`` (lower is better), the only metric it
        tracks per epoch.
    k : int
        Cut-off of the ranking metric.
    validation : optional
        Held-out ratings in original ids; default: carved from ``train``
        (``validation_fraction`` of each user's positives, or of the ratings for SVD).
    search_space : dict, optional
        ``{name: {"low", "high"[, "log"]} | {"choices": [...]}}``; default the model's
        ``search_space``.
    random_state : int
        Seeds the sampler, the validation carve and trials of an estimator without one.
    validation_fraction : float
        Share held out when carving.
    workers_per_trial : int, optional
        Workers one fit uses; default the estimator's ``n_blocks`` when set below the
        number of workers, else all of them. Trials run concurrently on
        ``workers // workers_per_trial`` groups when that is 2 or more.
    pruning : bool
        Median-prune trials on the per-iteration validation metric.
    start_from_estimator : bool
        Make the first trial the estimator's own values of the searched parameters (its
        defaults for the data's feedback where left None; a value outside the space is
        drawn instead), so the search starts from a known point and its best is never
        below that point's validation score.
    show_progress : bool
        A progress bar over trials (``MFDASK_NO_PROGRESS=1`` hides it).

    Returns
    -------
    TuneResult

    Raises
    ------
    OptunaMissingError
        Optuna is not installed (``pip install 'mfdask[tune]'``).
    ValueError
        An unknown metric or parameter name, or every trial failed.
    """
    optuna = _optuna()
    if not isinstance(estimator, FactorModel):
        raise TypeError(f"tune needs an mfdask model, got {type(estimator).__name__}")
    cls = type(estimator)
    ranking = bool(cls.implicit)
    allowed = VALIDATION_METRICS if ranking else RATING_METRICS
    if metric not in allowed:
        hint = "" if ranking else " (SVD tracks validation RMSE per epoch: metric='rmse')"
        raise ValueError(
            f"{cls.__name__} cannot be tuned on {metric!r}; choose one of {list(allowed)}{hint}"
        )
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if not 0.0 < float(validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    space = dict(cls.search_space if search_space is None else search_space)
    _check_space(cls, space)
    unit = next((p for p in ITERATION_PARAMS if p in cls._param_names()), None)
    base = estimator.get_params()
    if base.get("random_state") is None:
        base["random_state"] = int(random_state)
    base["show_progress"] = False
    if ranking:
        base["validation_metric"] = metric
        base["validation_k"] = int(k)

    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with session() as client:
        groups = _groups(client, estimator, workers_per_trial)
        prepared = _prepare(
            client,
            estimator,
            train,
            validation,
            k=int(k),
            fraction=float(validation_fraction),
            seed=int(random_state),
        )
        free: queue.Queue[int] = queue.Queue()
        for g in range(len(groups)):
            free.put(g)
        direction = "maximize" if ranking else "minimize"
        sampler = _sampler(optuna, int(random_state), n_trials)
        pruner = (
            optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
            if pruning
            else optuna.pruners.NopPruner()
        )
        study = optuna.create_study(direction=direction, sampler=sampler, pruner=pruner)
        start = (
            _estimator_point(estimator, prepared.train.feedback, space)
            if start_from_estimator
            else {}
        )
        if start:
            study.enqueue_trial(start, user_attrs={"source": "estimator"})

        def objective(trial: Any) -> float:
            params = _suggest(trial, space)
            model = cls(**{**base, **params})
            model._validate_params()
            scores: list[float] = []
            pruned = [False]

            def hook(event: IterationEvent) -> bool:
                if event.score is None:
                    return True
                scores.append(float(event.score))
                trial.report(float(event.score), event.iteration)
                if trial.should_prune():
                    pruned[0] = True
                    return False
                return True

            group = free.get()
            trial.set_user_attr("group", group)
            t0 = time.perf_counter()
            trial.set_user_attr("start", t0 - started)
            try:
                with worker_group(groups[group]), iteration_hook(hook):
                    model.fit(prepared.train, validation=prepared.validation)
            except FAILED_ERRORS as exc:
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
                trial.set_user_attr("iterations", len(scores))
                trial.set_user_attr("seconds", time.perf_counter() - t0)
                raise
            finally:
                free.put(group)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            trial.set_user_attr("iterations", len(scores))
            if not scores:
                raise ValueError("the fit recorded no validation score")
            arr = np.asarray(scores)
            best = int(np.nanargmax(arr) if ranking else np.nanargmin(arr))
            trial.set_user_attr("best_iteration", best + 1)
            trial.set_user_attr("best_score", float(arr[best]))
            if not math.isfinite(arr[best]):
                raise ModelFitError("no finite validation score")
            if pruned[0]:
                raise optuna.TrialPruned(f"pruned after iteration {len(scores)}")
            return float(arr[best])

        bar = progress_bar(show_progress, n_trials, "trial")

        def progress(study: Any, trial: Any) -> None:
            if bar is None:
                return
            bar.update(1)
            try:
                bar.set_postfix({"best": f"{study.best_value:.4f}"})
            except ValueError:  # no completed trial yet
                pass

        try:
            study.optimize(
                objective,
                n_trials=n_trials,
                timeout=timeout,
                n_jobs=len(groups),
                catch=FAILED_ERRORS,
                callbacks=[progress],
                gc_after_trial=True,  # a trial's engine cycles hold blocks on the workers
            )
        finally:
            if bar is not None:
                bar.close()
            validation_info = dict(prepared.info)
            if isinstance(prepared.validation, _SharedRanking):
                validation_info["placements"] = prepared.validation.placements
                prepared.validation.close()
            prepared.keep.clear()  # the rest goes with this frame: nothing stays persisted
    trials = _trials_frame(study, list(space))
    complete = trials[trials["state"] == "COMPLETE"]
    if complete.empty:
        errors = trials["error"].dropna().unique().tolist()[:3]
        raise ValueError(
            f"every one of the {len(trials)} trials of {cls.__name__} failed or was pruned"
            + (f"; errors: {errors}" if errors else "")
            + ": widen or move search_space, or raise the iteration budget"
        )
    best = study.best_trial
    best_params = dict(best.params)
    if unit is not None and "best_iteration" in best.user_attrs and unit not in space:
        best_params[unit] = int(best.user_attrs["best_iteration"])
    return TuneResult(
        best_params=best_params,
        best_score=float(best.value),
        metric=metric,
        higher_is_better=ranking,
        trials=trials,
        seconds=time.perf_counter() - started,
        validation=validation_info,
        concurrency=len(groups),
        study=study,
    )


def _trials_frame(study: Any, names: list[str]) -> pd.DataFrame:
    rows = []
    for t in study.trials:
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "score": float(t.value)
                if t.value is not None
                else float(t.user_attrs.get("best_score", math.nan)),
                **{n: t.params.get(n) for n in names},
                "iterations": t.user_attrs.get("iterations"),
                "best_iteration": t.user_attrs.get("best_iteration"),
                "seconds": t.user_attrs.get("seconds"),
                "start": t.user_attrs.get("start"),
                "group": t.user_attrs.get("group"),
                "source": t.user_attrs.get("source", "sampler"),
                "error": t.user_attrs.get("error"),
            }
        )
    columns = ["number", "state", "score", *names]
    columns += ["iterations", "best_iteration", "seconds", "start", "group", "source", "error"]
    return pd.DataFrame(rows, columns=columns)
