"""The fit loop every model runs: :class:`Trainer`, driven by a model's :class:`Objective`.

A model does not loop. It describes its loss as an *objective* (a small object with the
methods of :class:`Objective`: place the ratings, draw the initial state, give the block
kernel of an iteration, turn an iteration's statistics into a history record, score the
validation data, keep the result) and hands it to a :class:`Trainer`, which owns the rest:

- iterations (ALS) or epochs (SGD models), numbered from 0 here and from 1 in records;
- for DSGD engines, submitting epochs ahead and fusing short ones
  (:class:`~mfdask.engine.pipeline.EpochPipeline`), when the objective allows it;
- checkpoints every ``checkpoint_every`` iterations, resuming, and the lineage cut after
  each checkpoint (:func:`mfdask.engine.resilience.run_fit`);
- recovering from a lost worker: the ratings are placed again and the fit replays from
  the last checkpoint, or from the start drawn again from the *same* entropy, so that
  even with ``random_state=None`` the recovered fit is the uninterrupted one;
- validation and early stopping (:class:`BestIteration`), the best iteration's state
  kept as engine blocks and gathered only when a checkpoint or the end needs it;
- one progress bar (hidden with ``MFDASK_NO_PROGRESS=1``), the history records, the
  user's callback, and the divergence error (:class:`~mfdask.errors.ModelFitError`);
- iteration hooks (:func:`iteration_hook`): whoever runs a fit from the outside (the
  tuner's pruner) sees each iteration's validation score and may stop the fit, without
  the model knowing.

The trainer sees arrays, engines (:class:`~mfdask.engine.dsgd.DSGD`,
:class:`~mfdask.engine.als.BlockALS`) and plain settings (:class:`TrainSettings`); it
never imports a model. Which file to open for what:

========================================  ==============================================
``<model>.py`` among the models           the estimator, its parameters and its objective
``mfdask/engine/trainer.py`` (this file)   the loop: checkpoints, validation, progress
``mfdask/engine/pipeline.py``             DSGD look-ahead and fused epochs
``mfdask/engine/resilience.py``           waiting on the cluster, recovery, ``run_fit``
``mfdask/engine/dsgd.py``, ``als.py``      the engines: blocks on workers, one epoch
``mfdask/kernels/``                       the numba loops the block kernels call
========================================  ==============================================
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mfdask._progress import progress_bar
from mfdask._warnings import HistoryRecord
from mfdask.engine.als import BlockALS
from mfdask.engine.checkpoint import BlockFiles, Checkpoint, FitCheckpoints
from mfdask.engine.cluster import session
from mfdask.engine.dsgd import DSGD
from mfdask.engine.finite import all_finite
from mfdask.engine.pipeline import EpochPipeline
from mfdask.engine.resilience import run_fit
from mfdask.engine.state import FactorBlocks
from mfdask.engine.warmup import warm_workers
from mfdask.errors import ModelFitError

State = dict[str, np.ndarray]
"""One side's state: named arrays whose first axis is the global row (user or item)."""

Arrays = dict[str, np.ndarray]
Callback = Callable[[dict[str, Any]], Any]
"""Called with each iteration's record; returning ``False`` stops the fit."""


def flatten_state(prefix: str, state: State) -> Arrays:
    """``{"factors": a}`` -> ``{"<prefix>.factors": a}``: engine state as checkpoint arrays."""
    return {f"{prefix}.{name}": array for name, array in state.items()}


def unflatten_state(prefix: str, arrays: Arrays) -> State:
    """The inverse of :func:`flatten_state` for one ``prefix``."""
    head = f"{prefix}."
    return {name[len(head) :]: a for name, a in arrays.items() if name.startswith(head)}


_LEGACY_ARRAYS = {
    "user_factors": "user.factors",
    "item_factors": "item.factors",
    "best_user_factors": "best.user.factors",
    "best_item_factors": "best.item.factors",
}
"""Array names of ALS checkpoints written before the trainer (read back under the new)."""


@dataclass(frozen=True)
class IterationEvent:
    """What an :func:`iteration_hook` sees after each iteration of a fit.

    Attributes
    ----------
    iteration : int
        0-based.
    record : dict
        The history record (read it, do not change it).
    score : float or None
        The validation score of this iteration (None without validation data).
    higher_is_better : bool
        Direction of ``score``.
    model : str
        The objective's name (``"ALS"``).
    """

    iteration: int
    record: dict[str, Any]
    score: float | None
    higher_is_better: bool
    model: str


IterationHook = Callable[[IterationEvent], Any]
"""Returns ``False`` to stop the fit (as a callback returning ``False`` does)."""

_HOOKS: contextvars.ContextVar[tuple[IterationHook, ...]] = contextvars.ContextVar(
    "mfdask_iteration_hooks", default=()
)


@contextmanager
def iteration_hook(hook: IterationHook) -> Iterator[None]:
    """Call ``hook`` after every iteration of every fit run in this context (thread).

    The way to watch or stop a fit from outside the model (a tuner's pruner): the hook
    gets an :class:`IterationEvent`; returning ``False`` stops the fit the way a
    callback returning ``False`` does, cleanly (the look-ahead is cancelled, the fit
    ends with the state it has, the engine closes). Hooks nest; a context variable keeps
    the fits of other threads out of it.
    """
    token = _HOOKS.set((*_HOOKS.get(), hook))
    try:
        yield
    finally:
        _HOOKS.reset(token)


@dataclass
class BestIteration:
    """The best validation score so far, the iteration (0-based) that reached it and the
    state then.

    ``state`` is whatever the engine can cheaply hold: handles to immutable blocks on
    the cluster (DSGD) or arrays (ALS); the trainer turns it into arrays when a
    checkpoint or the end of the fit needs them.

    Parameters
    ----------
    higher_is_better : bool
        True for ranking metrics (NDCG), False for errors (RMSE).
    patience : int or None
        Early stopping: stop once this many iterations pass without a better score;
        None never stops (the best state is still recorded).
    """

    higher_is_better: bool
    patience: int | None
    score: float | None = None
    iteration: int = -1
    state: Any = None

    def __bool__(self) -> bool:
        return self.score is not None

    def offer(self, score: float, iteration: int, state: Callable[[], Any]) -> bool:
        """Record ``score`` of ``iteration`` if it is the best so far (then call ``state``)."""
        if self.score is None or (
            score > self.score if self.higher_is_better else score < self.score
        ):
            self.score, self.iteration, self.state = float(score), int(iteration), state()
            return True
        return False

    def exhausted(self, iteration: int) -> bool:
        """Whether ``patience`` iterations have passed since the best one."""
        return (
            self.score is not None
            and self.patience is not None
            and iteration - self.iteration >= self.patience
        )

    def clear(self) -> None:
        self.score, self.iteration, self.state = None, -1, None

    def summary(self) -> dict[str, Any] | None:
        """Score and iteration for a checkpoint's JSON state (None before any)."""
        return None if self.score is None else {"score": self.score, "iteration": self.iteration}

    def load(self, summary: dict[str, Any] | None, state: Any) -> None:
        """The inverse of :meth:`summary`, with the state the checkpoint's arrays give."""
        self.clear()
        if summary:
            self.score, self.iteration, self.state = (
                float(summary["score"]),
                int(summary["iteration"]),
                state,
            )


@dataclass(frozen=True)
class TrainSettings:
    """What the trainer needs of a model's parameters.

    Attributes
    ----------
    iterations : int
        Iterations (ALS) or epochs (SGD) to run, fewer with early stopping.
    random_state : int or None
        Seeds the initial state (and, through the objective, every random stream). None
        draws an entropy once per fit and keeps it, so a restart redraws the same start.
    early_stopping_rounds : int or None
        With validation: stop after this many iterations without a better score and
        keep the best iteration's state.
    show_progress : bool
        One progress bar over the iterations.
    unit : str
        What an iteration is called in the progress bar and in messages (``"epoch"``).
    max_recoveries : int
        Lost workers tolerated before :class:`~mfdask.engine.resilience.RecoveryError`.
    """

    iterations: int
    random_state: int | None = None
    early_stopping_rounds: int | None = None
    show_progress: bool = False
    unit: str = "iteration"
    max_recoveries: int = 3


@dataclass
class IterationReport:
    """What one iteration did: the engine's summed statistics and its wall time."""

    iteration: int
    stats: dict[str, float]
    seconds: float


@dataclass
class FitResult:
    """The end of a fit, as :meth:`Objective.finish` receives it.

    ``user`` and ``item`` are the state to keep (the best iteration's with early
    stopping); ``best_iteration`` is 0-based, None without validation.
    """

    user: State
    item: State
    history: list[dict[str, Any]]
    best_score: float | None
    best_iteration: int | None
    early_stopping: bool
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    seconds: float = 0.0


class Objective:
    """What a model tells the trainer about its loss; models subclass it.

    A subclass sets ``name`` and the attributes that differ from these defaults, and
    defines :meth:`build`, :meth:`begin`, :meth:`initial_state`, :meth:`record` and
    :meth:`finish`; a DSGD model also :meth:`kernel`, a model with validation
    :meth:`validate`, one with optimiser memory (the bold driver's losses)
    :meth:`state` and :meth:`load_state`.

    Attributes
    ----------
    name : str
        The model's name in messages (``"SVD"``).
    higher_is_better : bool
        Direction of the validation score.
    validation_key : str or None
        Record key of the validation score; None when the fit has no validation data.
    progress_keys : tuple of str
        Record values shown next to the progress bar.
    finite_keys : tuple of str
        Record values that must be finite; otherwise the fit diverged.
    advice : str
        What to change when the fit diverges (ends the :class:`ModelFitError` message).
    looks_ahead : bool
        Whether the kernel of iteration ``i + 1`` is known before iteration ``i``'s
        statistics are (a learning rate fixed in advance): then DSGD epochs are
        submitted ahead and short ones fused.
    shuffle_strata : bool
        DSGD: draw a new stratum order every epoch.
    """

    name = "model"
    higher_is_better = True
    validation_key: str | None = None
    progress_keys: tuple[str, ...] = ()
    finite_keys: tuple[str, ...] = ()
    advice = "lower the learning rate or raise the regularization"
    looks_ahead = True
    shuffle_strata = True

    def build(self, client: Any) -> DSGD | BlockALS:
        """Place the ratings on the cluster: the engine of this fit."""
        raise NotImplementedError

    def begin(self, engine: Any) -> dict[str, Any]:
        """Read what the engine knows (counts, seen items); return the checkpoint identity."""
        raise NotImplementedError

    def initial_state(self, rng: np.random.Generator) -> tuple[State, State]:
        """The state before the first iteration, drawn by global row from ``rng``."""
        raise NotImplementedError

    def sampling_seed(self, rng: np.random.Generator) -> int:
        """The seed of the engine's random streams (drawn after :meth:`initial_state`)."""
        return int(rng.integers(2**62))

    def kernel(self, iteration: int) -> Any:
        """DSGD: the block kernel of ``iteration`` (its learning rate, ...)."""
        raise NotImplementedError(f"{self.name} trains no DSGD kernel")

    def record(self, iteration: int, report: Any) -> dict[str, Any]:
        """The history record of ``iteration`` from its report (``stats``, ``seconds``)."""
        raise NotImplementedError

    def validate(self, iteration: int, current: Callable[[], tuple[State, State]]) -> float:
        """The validation score after ``iteration`` (``current()`` gathers the state)."""
        raise NotImplementedError(f"{self.name} has no validation")

    def state(self) -> dict[str, Any]:
        """JSON-serialisable optimiser state for a checkpoint (learning rates, ...)."""
        return {}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state` from a checkpoint's state; None: the start of the fit."""
        return None

    def finish(self, result: FitResult) -> None:
        """Keep the fitted state (on the model)."""
        raise NotImplementedError


# ---------------------------------------------------------------------- engine drivers
class _DSGDDriver:
    """Epochs of a :class:`DSGD` engine through an :class:`EpochPipeline`."""

    def __init__(
        self,
        engine: DSGD,
        objective: Objective,
        may_look_ahead: Callable[[int], bool],
        fuse: bool,
    ) -> None:
        self.engine = engine
        self.objective = objective
        self.seed = 0
        self.pipeline = EpochPipeline(engine, self._submit, may_look_ahead, fuse=fuse)

    def _submit(self, epochs: range) -> list[Any]:
        kernels = [self.objective.kernel(e) for e in epochs]
        return self.engine.submit_epochs(
            kernels, epochs.start, self.seed, self.objective.shuffle_strata
        )

    def run(self, iteration: int) -> Any:
        return self.pipeline.run(iteration)  # an EpochReport (also has .plan and .epoch)

    def stop(self) -> None:
        self.pipeline.stop()

    def forget(self) -> None:
        self.pipeline.forget()

    def set_state(self, user: State, item: State) -> None:
        self.engine.set_state(user, item)

    def gather_state(self, snapshot: Any = None) -> tuple[State, State]:
        return self.engine.gather_state(snapshot)

    def snapshot(self) -> Any:
        return self.engine.snapshot()

    def loaded(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with checkpoint block files (a resumed fit that had finished) loaded
        onto the engine's workers, as the fit's other blocks are."""
        return {
            name: a.load(self.engine.client, self.engine.workers)
            if isinstance(a, BlockFiles)
            else a
            for name, a in state.items()
        }


def _finite_block(block: np.ndarray, b: int) -> bool:
    return all_finite(block)


class _ALSDriver:
    """Iterations of a :class:`BlockALS` engine (no random streams).

    The state is ``{"factors": ...}`` per side; a snapshot is the gathered arrays (the
    validation gathered them already: one gather serves both). Iteration ``i + 1`` is
    submitted before ``i`` is waited for when ``may_look_ahead(i + 1)`` (nothing reads
    ``i``'s state in between: no loss, no validation, no checkpoint), so the workers go
    on while the client hears that ``i`` finished; :meth:`stop` takes it back.
    """

    def __init__(
        self, engine: BlockALS, may_look_ahead: Callable[[int], bool] = lambda i: False
    ) -> None:
        self.engine = engine
        self.seed = 0
        self._gathered: tuple[tuple[Any, ...], tuple[State, State]] | None = None
        self._may_look_ahead = may_look_ahead
        # iteration submitted ahead, the mark before it, when it was submitted
        self._ahead: tuple[int, Any, float] | None = None
        self._last_done = 0.0

    def run(self, iteration: int) -> IterationReport:
        self._gathered = None  # it would keep the last iteration's blocks alive
        ahead = self._ahead
        if ahead is not None and ahead[0] == iteration:
            submitted = ahead[2]
        else:
            submitted = time.perf_counter()
            self.engine.iterate()  # users against items, then items against users
        self._ahead = None
        mark = self.engine.mark()
        if self._may_look_ahead(iteration + 1):
            self._ahead = (iteration + 1, mark, time.perf_counter())
            self.engine.iterate()
        self.engine.wait(mark)
        now = time.perf_counter()
        seconds = now - max(submitted, self._last_done)
        self._last_done = now
        return IterationReport(iteration, {}, seconds)

    def stop(self) -> None:
        if self._ahead is not None:
            self.engine.restore_mark(self._ahead[1])
            self._ahead = None

    def forget(self) -> None:
        self._ahead = None

    def set_state(self, user: State, item: State) -> None:
        self.engine.initialize(user["factors"], item["factors"])

    def gather_state(self, snapshot: Any = None) -> tuple[State, State]:
        if snapshot is not None:
            return snapshot
        keys = tuple(f.key for f in self.engine.user_factors + self.engine.item_factors)
        gathered = self._gathered
        if gathered is None or gathered[0] != keys:
            users, items = self.engine.factors()
            gathered = self._gathered = (keys, ({"factors": users}, {"factors": items}))
        return gathered[1]

    def snapshot(self) -> Any:
        return self.gather_state()


def _driver(engine: Any, objective: Objective, may_look_ahead: Callable[[int], bool], fuse: bool):
    if isinstance(engine, DSGD):
        return _DSGDDriver(engine, objective, may_look_ahead, fuse)
    if isinstance(engine, BlockALS):
        return _ALSDriver(engine, may_look_ahead)
    raise TypeError(f"the trainer runs DSGD or BlockALS engines, not {type(engine).__name__}")


class _BestState:
    """The best iteration's state: engine snapshot until a checkpoint needs arrays.

    Once captured into a checkpoint it is held as arrays on the client: the checkpoint's
    reseed replaces every block on the cluster (cutting the lineage), and the snapshot's
    blocks would otherwise be kept alive only for it.
    """

    def __init__(self, driver: Any, best: BestIteration) -> None:
        self.driver = driver
        self.best = best
        self._on_client = False

    def offer(self, score: float, iteration: int) -> bool:
        better = self.best.offer(score, iteration, self.driver.snapshot)
        if better:
            self._on_client = False
        return better

    def arrays(self) -> tuple[State, State]:
        if not self._on_client:
            self.best.state = self.driver.gather_state(self.best.state)
            self._on_client = True
        return self.best.state

    def capture(self) -> Arrays:
        """The current and the best state as flat named arrays (gathered from workers)."""
        user, item = self.driver.gather_state()
        arrays = {**flatten_state("user", user), **flatten_state("item", item)}
        if self.best:
            best_user, best_item = self.arrays()
            arrays.update(flatten_state("best.user", best_user))
            arrays.update(flatten_state("best.item", best_item))
        return arrays

    def reseed(self, arrays: Arrays) -> None:
        """Place checkpoint arrays on the engine as fresh blocks (cuts the lineage)."""
        self.driver.set_state(unflatten_state("user", arrays), unflatten_state("item", arrays))

    def restore(self, arrays: Arrays, summary: dict[str, Any] | None) -> None:
        """Make a checkpoint's arrays (and its best iteration) current."""
        self.best.load(
            summary, (unflatten_state("best.user", arrays), unflatten_state("best.item", arrays))
        )
        self._on_client = True
        self.reseed(arrays)

    def final(self, arrays: Arrays) -> tuple[State, State]:
        """The state to keep: the best iteration's with early stopping."""
        if self.best and self.best.patience is not None:
            return self.arrays()
        return unflatten_state("user", arrays), unflatten_state("item", arrays)


# ---------------------------------------------------------------------- the trainer
class Trainer:
    """Runs a fit: the loop of every model, from the first iteration to the kept state.

    Parameters
    ----------
    settings : TrainSettings
    checkpoints : FitCheckpoints
        The fit's checkpoint policy (directory, period, resume).
    callback : callable, optional
        Called with each record; returning ``False`` stops the fit. Records replayed
        after a lost worker or a resume are passed again. Without a callback short
        DSGD epochs may be fused (they could not be stopped one by one).
    history : list, optional
        The list to keep the records in (the model's ``history_``, filled as the fit
        runs); a new one by default.
    """

    def __init__(
        self,
        settings: TrainSettings,
        checkpoints: FitCheckpoints,
        callback: Callback | None = None,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.checkpoints = checkpoints
        self.callback = callback
        self.history: list[dict[str, Any]] = [] if history is None else history

    def fit(self, objective: Objective) -> FitResult:
        """Connect (:func:`~mfdask.engine.cluster.session`), build the engine, train."""
        with session() as client:
            warm_workers(client)  # kernels load on the workers while the ratings are placed
            engine = objective.build(client)
            try:
                result = self._run(client, engine, objective)
            finally:
                engine.close()
        objective.finish(result)
        return result

    def _run(self, client: Any, engine: Any, objective: Objective) -> FitResult:
        settings, checkpoints, history = self.settings, self.checkpoints, self.history
        start = checkpoints.begin(objective.begin(engine))
        # One entropy per fit: a restart from scratch (a worker lost before the first
        # checkpoint) draws the same start even with random_state=None.
        entropy = (
            settings.random_state
            if settings.random_state is not None
            else np.random.SeedSequence().entropy
        )
        validates = objective.validation_key is not None
        n_iterations = int(settings.iterations)

        def may_look_ahead(iteration: int) -> bool:
            # Only when nothing needs this iteration's state or statistics before the
            # next one runs: no validation, a schedule fixed in advance, not past the
            # end, not across a checkpoint (which must capture this iteration's state).
            return (
                objective.looks_ahead
                and not validates
                and iteration < n_iterations
                and not checkpoints.due(iteration)
            )

        hooks = _HOOKS.get()
        fuse = self.callback is None and not hooks
        driver = _driver(engine, objective, may_look_ahead, fuse=fuse)
        best = _BestState(
            driver, BestIteration(objective.higher_is_better, settings.early_stopping_rounds)
        )
        bar = progress_bar(settings.show_progress, n_iterations, settings.unit)

        def step(iteration: int) -> bool:
            report = driver.run(iteration)
            record = HistoryRecord(objective.record(iteration, report))
            for key in objective.finite_keys:
                if key in record and not math.isfinite(record[key]):
                    raise ModelFitError(
                        f"{objective.name} diverged in {settings.unit} {iteration + 1} "
                        f"({key} {record[key]}): the steps grew without bound; "
                        f"{objective.advice}"
                    )
            keep_going = True
            score: float | None = None
            if objective.validation_key is not None:
                score = objective.validate(iteration, driver.gather_state)
                record[objective.validation_key] = score
                best.offer(score, iteration)
                keep_going = not best.best.exhausted(iteration)
            record.setdefault("seconds", report.seconds)
            history.append(record)
            if self.callback is not None and self.callback(record) is False:
                keep_going = False
            if hooks:
                event = IterationEvent(
                    iteration, record, score, objective.higher_is_better, objective.name
                )
                for hook in hooks:
                    if hook(event) is False:
                        keep_going = False
            if bar is not None:
                bar.update(1)
                shown = {k: f"{record[k]:.4f}" for k in objective.progress_keys if k in record}
                bar.set_postfix(shown)
            if not keep_going:
                driver.stop()
            return keep_going

        def capture() -> tuple[Arrays, dict[str, Any]]:
            state = {
                "seed": driver.seed,
                **objective.state(),
                "history": history,
                "best": best.best.summary(),
            }
            return best.capture(), state

        def restore(point: Checkpoint | None) -> None:
            driver.forget()
            if point is None:
                best.best.clear()
                rng = np.random.default_rng(entropy)
                driver.set_state(*objective.initial_state(rng))
                driver.seed = objective.sampling_seed(rng)
                objective.load_state(None)
                history[:] = []
            else:
                arrays = {_LEGACY_ARRAYS.get(k, k): a for k, a in point.arrays.items()}
                driver.seed = int(point.state.get("seed", 0))
                objective.load_state(point.state)
                history[:] = [HistoryRecord(r) for r in point.state["history"]]
                best.restore(arrays, point.state.get("best"))
            if bar is not None:
                bar.n = len(history)
                bar.refresh()

        started = time.perf_counter()
        try:
            final, recoveries = run_fit(
                client,
                n_iterations,
                step=step,
                capture=capture,
                restore=restore,
                reseed=lambda arrays: best.reseed(arrays),
                rebuild=engine.rebuild,
                checkpoints=checkpoints,
                start=start,
                max_recoveries=settings.max_recoveries,
            )
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - started
        user, item = best.final({_LEGACY_ARRAYS.get(k, k): a for k, a in final.arrays.items()})
        if isinstance(driver, _DSGDDriver):
            user, item = driver.loaded(user), driver.loaded(item)
        for side, state in (("user", user), ("item", item)):
            for name, array in state.items():
                if isinstance(array, FactorBlocks) and isinstance(driver, _DSGDDriver):
                    finite = all(array._gather(array.map_blocks(_finite_block)))
                    array = np.array([1.0 if finite else np.nan])  # checked on the workers
                if not isinstance(array, np.ndarray):
                    continue  # ALS blocks kept on the workers: checked as they were solved
                if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                    raise ModelFitError(
                        f"{objective.name} diverged: its {side} {name} are not all finite "
                        f"after {len(history)} {settings.unit}s; {objective.advice}"
                    )
        early = bool(best.best) and settings.early_stopping_rounds is not None
        return FitResult(
            user=user,
            item=item,
            history=history,
            best_score=best.best.score,
            best_iteration=best.best.iteration if best.best else None,
            early_stopping=early,
            recoveries=recoveries,
            resumed_from=start.iteration if start is not None else None,
            seconds=seconds,
        )
