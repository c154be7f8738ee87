"""State blocks handed straight from worker to worker inside a DSGD epoch.

Between two sub-epochs of DSGD every item block moves to the worker that trains its
next cell. Through the task graph each hand-over costs a finished task, a ``getitem``
and the next task's dispatch: several scheduler round trips, about 20 ms on a
two-worker cluster however small the block. When every user block has a worker of its
own, :mod:`mfdask.engine.dsgd` instead runs each user block's whole epoch as one task
and the tasks pass item blocks to one another directly:

- the sender calls the receiving worker's ``mfdask_put_block`` handler (one RPC over the
  connection pool the workers already use to move data, acknowledged once the block is
  stored: :meth:`Exchange.send`);
- the receiver's task waits (:meth:`Exchange.receive`) on its worker's :class:`BlockMailbox`
  (installed on every worker by :class:`BlockExchangePlugin`, also on workers that join
  later) until the block is there.

A waiting task must not keep its worker from running the tasks its peers need: the
peer's own epoch task may still wait for a ``getitem`` that is queued behind the waiting
task on the same worker's only thread, and after a lost peer the recovery needs the
thread too. When a wait (to receive, or for a send to complete) lasts longer than
:data:`SECEDE_AFTER`, the task therefore leaves the worker's thread pool
(``distributed.secede``), which opens a slot for the queued work; within a normal
hand-over (milliseconds) it never does.

Blocks are addressed by a *token* naming one submitted epoch and a key
``(sub_epoch, item_block)``, so a late or repeated message can never be taken for another
epoch's. An epoch that will never complete (a peer died, the driver discarded a
look-ahead epoch, the fit ended) is cut short with :func:`abort_exchanges`: its waiting
tasks raise :class:`BlockExchangeError` at once instead of holding a worker thread, and
blocks that arrive for it later are dropped.

:class:`BlockExchangeError` derives from ``CommClosedError``, so the driver's waits
(:mod:`mfdask.engine.resilience`) treat a failed hand-over like any other lost worker.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from distributed import Client, get_worker, secede
from distributed.comm.core import CommClosedError
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol import to_serialize

from mfdask.errors import MfdaskError

EXTENSION = "mfdask-block-exchange"
"""Name of the plugin, and key of the mailbox in ``Worker.extensions``."""

HANDLER = "mfdask_put_block"
"""The RPC a sender calls on the receiving worker."""

RECEIVE_TIMEOUT = 600.0
"""Seconds a task waits for a block before giving up on its peer (a safety net: a lost
peer or a dropped epoch normally ends the wait at once through :func:`abort_exchanges`)."""

SECEDE_AFTER = 0.1
"""Seconds a task waits for a block before it gives its thread slot back to the worker."""

SEND_POLL = 0.05
"""Seconds between two checks of a sending task for an abort (the send itself wakes it)."""

WAIT_SLICE = 0.5
"""Seconds between two checks of a waiting task for an abort or its worker closing."""


class BlockExchangeError(MfdaskError, CommClosedError):
    """A block could not be handed over: the peer is gone or the epoch was aborted.

    A ``CommClosedError`` too, so that a fit recovers from it as from a lost peer.
    """


def _matches(token: str, prefix: str) -> bool:
    return token == prefix or token.startswith(prefix + "/")


NOT_YET = object()
"""What :meth:`BlockMailbox.take` returns when its ``patience`` ran out."""


class BlockMailbox:
    """Blocks sent to one worker, held until the task that needs them takes them.

    Thread-safe: :meth:`put` runs on the worker's event loop, :meth:`take` in a task
    thread.

    Parameters
    ----------
    remembered_aborts : int
        How many aborted token prefixes are remembered (to drop blocks that arrive
        after their epoch was aborted).
    """

    def __init__(self, remembered_aborts: int = 4096) -> None:
        self._blocks: dict[tuple[str, Hashable], Any] = {}
        self._aborted: deque[str] = deque(maxlen=remembered_aborts)
        self._changed = threading.Condition()
        self.closed = False

    def _is_aborted(self, token: str) -> bool:
        return any(_matches(token, prefix) for prefix in self._aborted)

    def is_aborted(self, token: str) -> bool:
        """Whether ``token`` (or a prefix of it) was aborted."""
        with self._changed:
            return self._is_aborted(token)

    def put(self, token: str, key: Hashable, block: Any) -> bool:
        """Store ``block`` for ``(token, key)``; False (and dropped) if the token is aborted."""
        with self._changed:
            if self._is_aborted(token):
                return False
            self._blocks[(token, key)] = block
            self._changed.notify_all()
            return True

    def take(
        self,
        token: str,
        key: Hashable,
        sender: str,
        timeout: float = RECEIVE_TIMEOUT,
        patience: float | None = None,
    ) -> Any:
        """Wait for and remove the block ``(token, key)``.

        With ``patience``, return :data:`NOT_YET` if the block is not there after that
        many seconds (the caller decides what to do before waiting on).

        Raises
        ------
        BlockExchangeError
            The token was aborted, the worker is closing, or nothing came within
            ``timeout`` seconds (``sender`` names the peer in the message).
        """
        now = time.monotonic()
        deadline = now + timeout
        give_up = None if patience is None else now + patience
        with self._changed:
            while True:
                if (token, key) in self._blocks:
                    return self._blocks.pop((token, key))
                if give_up is not None and time.monotonic() >= give_up:
                    return NOT_YET
                if self._is_aborted(token):
                    raise BlockExchangeError(
                        f"epoch {token} was aborted while waiting for block {key} from {sender}"
                    )
                if self.closed:
                    raise BlockExchangeError(
                        f"worker closing while waiting for block {key} from {sender}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BlockExchangeError(
                        f"no block {key} of epoch {token} came from {sender} within "
                        f"{timeout:g} s: that worker is stuck or gone"
                    )
                if give_up is not None:
                    left = min(left, give_up - time.monotonic())
                self._changed.wait(max(0.0, min(left, WAIT_SLICE)))

    def abort(self, prefix: str) -> int:
        """Abort every token equal to ``prefix`` or under ``prefix/``; drop their blocks.

        Returns how many held blocks were dropped.
        """
        with self._changed:
            self._aborted.append(prefix)
            stale = [k for k in self._blocks if _matches(k[0], prefix)]
            for k in stale:
                del self._blocks[k]
            self._changed.notify_all()
            return len(stale)

    def close(self) -> None:
        """Wake every waiting task with an error (the worker is shutting down)."""
        with self._changed:
            self.closed = True
            self._blocks.clear()
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._changed:
            return len(self._blocks)

    async def receive(self, token: str, key: list | tuple, block: Any) -> str:
        """The ``mfdask_put_block`` RPC handler (keys arrive as lists)."""
        return "stored" if self.put(token, tuple(key), block) else "aborted"


class BlockExchangePlugin(WorkerPlugin):
    """Installs a :class:`BlockMailbox` and its RPC handler on every worker."""

    idempotent = True
    name = EXTENSION

    def setup(self, worker: Any) -> None:
        if not isinstance(worker.extensions.get(EXTENSION), BlockMailbox):
            mailbox = BlockMailbox()
            worker.extensions[EXTENSION] = mailbox
            worker.handlers[HANDLER] = mailbox.receive

    def teardown(self, worker: Any) -> None:
        mailbox = worker.extensions.pop(EXTENSION, None)
        worker.handlers.pop(HANDLER, None)
        if isinstance(mailbox, BlockMailbox):
            mailbox.close()


def install(client: Client) -> None:
    """Register :class:`BlockExchangePlugin` on the cluster (once; idempotent)."""
    client.register_plugin(BlockExchangePlugin(), name=EXTENSION)


def _mailbox(worker: Any) -> BlockMailbox:
    mailbox = worker.extensions.get(EXTENSION)
    if not isinstance(mailbox, BlockMailbox):
        raise BlockExchangeError(
            f"worker {worker.address} has no block mailbox: register "
            "mfdask.engine.exchange.BlockExchangePlugin (DSGD does it when it starts)"
        )
    return mailbox


def writable(block: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``block`` with every array writable (a received buffer may be read-only)."""
    return {name: a if a.flags.writeable else a.copy() for name, a in block.items()}


class Exchange:
    """One task's hand-overs during one epoch ``token`` (use from the task's thread).

    :meth:`send` hands a block to another worker and returns once it is stored there;
    :meth:`receive` waits for one. Both give up at once when the token is aborted, and
    the first wait of either kind that outlasts :data:`SECEDE_AFTER` makes the task
    leave the worker's thread pool (see the module notes; at most once a task). A send
    to a worker that died may otherwise sit in connection retries for the whole connect
    timeout while the recovery needs this worker's thread.
    """

    def __init__(self, token: str, timeout: float = RECEIVE_TIMEOUT) -> None:
        self.token = token
        self.timeout = timeout
        self.seceded = False
        self._worker = get_worker()
        self._mailbox = _mailbox(self._worker)

    def _secede(self) -> None:
        if not self.seceded:
            secede()
            self.seceded = True

    def receive(self, key: tuple, sender: str) -> Any:
        """Wait for block ``key`` from ``sender``; see :meth:`BlockMailbox.take`."""
        if not self.seceded:
            block = self._mailbox.take(self.token, key, sender, patience=SECEDE_AFTER)
            if block is not NOT_YET:
                return block
            self._secede()
        return self._mailbox.take(self.token, key, sender, self.timeout)

    def send(self, address: str, key: tuple, block: Any) -> None:
        """Hand ``block`` to the worker at ``address`` under ``key``.

        The caller must not modify ``block`` afterwards: within one process the
        receiver gets the object itself.

        Raises
        ------
        BlockExchangeError
            The receiver is unreachable or refused the block, the token was aborted,
            or the send did not complete within the timeout.
        """
        worker = self._worker
        if address == worker.address:
            self._mailbox.put(self.token, key, block)
            return
        done = threading.Event()
        outcome: dict[str, Any] = {}

        async def call() -> None:
            try:
                rpc = worker.rpc(address)
                outcome["reply"] = await getattr(rpc, HANDLER)(
                    token=self.token, key=list(key), block=to_serialize(block)
                )
            except Exception as exc:  # reported to the task thread below
                outcome["error"] = exc
            finally:
                done.set()

        worker.loop.add_callback(call)
        started = time.monotonic()
        while not done.wait(SEND_POLL):
            waited = time.monotonic() - started
            if self._mailbox.is_aborted(self.token):
                raise BlockExchangeError(
                    f"epoch {self.token} was aborted while handing block {key} to {address}"
                )
            if waited > self.timeout:
                raise BlockExchangeError(
                    f"handing block {key} of epoch {self.token} to {address} took over "
                    f"{self.timeout:g} s: that worker is stuck or gone"
                )
            if waited > SECEDE_AFTER:
                self._secede()
        if "error" in outcome:
            exc = outcome["error"]
            raise BlockExchangeError(
                f"could not hand block {key} of epoch {self.token} to worker {address}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if outcome.get("reply") != "stored":
            raise BlockExchangeError(
                f"worker {address} did not store block {key} of epoch {self.token} "
                f"(reply {outcome.get('reply')!r})"
            )


def _abort_on_worker(prefix: str, dask_worker: Any = None) -> int:
    mailbox = dask_worker.extensions.get(EXTENSION) if dask_worker is not None else None
    return mailbox.abort(prefix) if isinstance(mailbox, BlockMailbox) else 0


def abort_exchanges(client: Client, prefix: str) -> None:
    """Abort the epochs under token ``prefix`` on every worker (best effort).

    Their waiting tasks fail at once with :class:`BlockExchangeError`, freeing their
    threads; blocks still arriving for them are dropped. Does nothing when the client is
    no longer connected.
    """
    if client.status != "running":
        return
    try:
        client.run(_abort_on_worker, prefix, on_error="ignore")
    except (OSError, CommClosedError, TimeoutError):
        pass
