"""What the models' fit loops share: the best iteration so far, and engine state in checkpoints.

Every model runs its iterations through :func:`mfdask.engine.resilience.run_fit`, which
asks the model to ``capture`` its state for a checkpoint, ``restore`` one, and ``reseed``
the engine from arrays. Two pieces of that are the same in every model and live here:

- :class:`BestIteration`: early stopping's memory (the best validation score, when it
  was reached and the state then), its place in a checkpoint, and when to stop.
- :class:`DSGDCheckpointing`: the state of a :class:`~mfdask.engine.dsgd.DSGD` engine,
  and of its best epoch, as named checkpoint arrays (``user.<name>``, ``item.<name>``,
  ``best.user.<name>``, ``best.item.<name>``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mfdask.models.base import flatten_state, unflatten_state

Arrays = dict[str, np.ndarray]


@dataclass
class BestIteration:
    """The best validation score so far, the iteration (0-based) that reached it and the
    model's state then.

    ``state`` is whatever the model can cheaply hold: arrays, or handles to immutable
    blocks on the cluster that :meth:`DSGDCheckpointing.capture` turns into arrays when
    a checkpoint needs them.

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


class DSGDCheckpointing:
    """A DSGD model's state, and its best epoch's, as named checkpoint arrays.

    The best epoch is held as an engine snapshot (immutable futures, no copy) until a
    checkpoint is captured; from then on as arrays on the client, because the
    checkpoint's reseed replaces every block on the cluster (cutting the lineage) and
    the snapshot's blocks would otherwise be kept alive only for it.
    """

    def __init__(self, engine: Any, best: BestIteration) -> None:
        self.engine = engine
        self.best = best
        self._best_on_client = False

    def offer(self, score: float, epoch: int) -> bool:
        """:meth:`BestIteration.offer` with the engine's current state."""
        better = self.best.offer(score, epoch, self.engine.snapshot)
        if better:
            self._best_on_client = False
        return better

    def _best_arrays(self) -> tuple[Arrays, Arrays]:
        if not self._best_on_client:
            self.best.state = self.engine.gather_state(self.best.state)
            self._best_on_client = True
        return self.best.state

    def capture(self) -> Arrays:
        """The current and the best state as flat named arrays (gathered from workers)."""
        user, item = self.engine.gather_state()
        arrays = {**flatten_state("user", user), **flatten_state("item", item)}
        if self.best:
            best_user, best_item = self._best_arrays()
            arrays.update(flatten_state("best.user", best_user))
            arrays.update(flatten_state("best.item", best_item))
        return arrays

    def reseed(self, arrays: Arrays) -> None:
        """Place checkpoint arrays on the engine as fresh blocks."""
        self.engine.set_state(unflatten_state("user", arrays), unflatten_state("item", arrays))

    def restore(self, arrays: Arrays, best: dict[str, Any] | None) -> None:
        """Make a checkpoint's arrays (and its best epoch, ``best`` its summary) current."""
        self.best.load(
            best, (unflatten_state("best.user", arrays), unflatten_state("best.item", arrays))
        )
        self._best_on_client = True
        self.reseed(arrays)

    def final(self, arrays: Arrays) -> tuple[Arrays, Arrays]:
        """User and item state to keep at the end: the best epoch's with early stopping."""
        if self.best and self.best.patience is not None:
            return self._best_arrays()
        return unflatten_state("user", arrays), unflatten_state("item", arrays)


GROUP_SECONDS = 1.0
"""Wall time a fused group of epochs aims at: short epochs are fused up to about this
long, so progress and statistics still arrive about once a second."""

MAX_FUSED_EPOCHS = 16
"""At most this many epochs are trained by the same tasks."""


class EpochPipeline:
    """Runs DSGD epochs one after another, submitting ahead and fusing short epochs.

    Two ways to keep the workers busy while the client reads statistics:

    - *Look-ahead*: epoch ``e + 1`` is submitted before ``e`` is collected, so the round
      trip between client and scheduler overlaps training (see
      :meth:`mfdask.engine.dsgd.DSGD.submit_epoch`). Only right when ``e + 1``'s kernel
      does not depend on what ``e`` reports and nothing needs ``e``'s state in between:
      the model says so through ``may_look_ahead(e + 1)`` (no validation, a learning
      rate fixed in advance, no checkpoint due after ``e``, not past the last epoch).
    - *Fusion*: when the engine passes item blocks worker to worker, several epochs
      can run in the same tasks (:meth:`~mfdask.engine.dsgd.DSGD.submit_epochs`), with
      no scheduler round trip between them at all. Epochs are fused while they are short
      (up to :data:`GROUP_SECONDS` a group, judged from the last epoch collected, at
      most :data:`MAX_FUSED_EPOCHS`), when the model allows it (``fuse``) and while
      ``may_look_ahead`` holds for each epoch of the group. The model must not need to
      stop the fit between epochs (no callback): a group can only be undone as a whole.

    Parameters
    ----------
    engine : DSGD
    submit : callable
        ``submit(epochs: range) -> list[PendingEpoch]``: the model's kernels for those
        epochs, submitted (``engine.submit_epochs``).
    may_look_ahead : callable
        ``may_look_ahead(epoch) -> bool``: whether ``epoch`` may be submitted before the
        one before it is collected.
    fuse : bool
        Whether epochs may be fused (False: one submission per epoch).
    """

    def __init__(
        self,
        engine: Any,
        submit: Callable[[range], list[Any]],
        may_look_ahead: Callable[[int], bool],
        fuse: bool = False,
        group_seconds: float = GROUP_SECONDS,
        max_fused: int = MAX_FUSED_EPOCHS,
    ) -> None:
        self.engine = engine
        self._submit = submit
        self._may_look_ahead = may_look_ahead
        self._fuse = bool(fuse)
        self._group_seconds = float(group_seconds)
        self._max_fused = max(1, int(max_fused))
        self._ahead: dict[int, Any] = {}
        self._next: int | None = None  # first epoch not submitted yet
        self._epoch_seconds: float | None = None

    def _group(self, first: int) -> range:
        limit = 1
        if self._fuse and self._epoch_seconds is not None and self._epoch_seconds > 0:
            fit = int(self._group_seconds / self._epoch_seconds + 1e-9)
            limit = min(self._max_fused, max(1, fit))
        size = 1
        while size < limit and self._may_look_ahead(first + size):
            size += 1
        return range(first, first + size)

    def _submit_from(self, first: int) -> None:
        for pending in self._submit(self._group(first)):
            self._ahead[pending.epoch] = pending
            self._next = pending.epoch + 1

    def run(self, epoch: int) -> Any:
        """Train ``epoch`` (submitted earlier or now) and return its report."""
        if epoch not in self._ahead:
            self._submit_from(epoch)
        pending = self._ahead.pop(epoch)
        # Keep one submission ahead of the one this epoch belongs to.
        group = pending.group
        end = epoch + (group.size - 1 - pending.row if group is not None else 0)
        if self._next == end + 1 and self._may_look_ahead(end + 1):
            self._submit_from(end + 1)
        report = self.engine.collect(pending)
        self._epoch_seconds = report.seconds
        return report

    def stop(self) -> None:
        """The fit stops here: drop the epochs submitted ahead, putting back the state.

        Raises RuntimeError when later epochs of the group just run are still pending
        (a fused group cannot stop half-way: ``fuse`` must be off when it could).
        """
        if any(p.before is None for p in self._ahead.values()):
            raise RuntimeError("a fit cannot stop inside a fused group of epochs")
        for epoch in sorted(self._ahead, reverse=True):
            self.engine.discard(self._ahead[epoch])
        self._ahead.clear()
        self._next = None

    def forget(self) -> None:
        """Drop epochs submitted ahead without touching the state (it is being replaced)."""
        self._ahead.clear()
        self._next = None
