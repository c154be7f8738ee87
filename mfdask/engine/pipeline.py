"""DSGD scheduling: epochs submitted ahead of the one being collected, short epochs fused.

:class:`EpochPipeline` is how :class:`mfdask.engine.trainer.Trainer` runs the epochs of a
:class:`~mfdask.engine.dsgd.DSGD` fit; it knows the engine and the epoch numbers, never
the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
