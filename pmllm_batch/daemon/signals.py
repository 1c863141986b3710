"""Stopping the watch service: stop requests, SIGTERM/SIGINT, and the grace timer that abandons a hung chunk.

A stop request only sets a flag; the scorer polls it between its chunks (each chunk is one committed transaction),
so the in-flight chunk finishes and the loop ends. A chunk still running ``grace_s`` seconds after a signal is
abandoned: a timer thread sends SIGUSR1 to the main thread, whose handler raises :class:`StopNow` there (nothing of
that chunk is committed yet; the next start redoes it). After the first signal SIGTERM/SIGINT get their default
behaviour back, so a second one kills at once even when a batch hangs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

STOP_GRACE_S = 3.0  # after SIGTERM, how long the in-flight chunk may take to commit before it is abandoned

# What signal.signal() takes and returns (typeshed's own alias is private).
SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopNow(BaseException):
    """Raised in the main thread when a stop request outlived its grace period (the chunk is abandoned)."""


class StopControl:
    """The stop flag and the signal handlers that set it.

    Everything but :meth:`install`, :meth:`disarm` and :meth:`restore` is safe from signal handlers and other
    threads: it only sets flags.

    Args:
        grace_s: Seconds the in-flight chunk may run on after a signal before it is abandoned.
    """

    def __init__(self, grace_s: float = STOP_GRACE_S) -> None:
        self.grace_s = grace_s
        self.requested = False
        self.reason = ""
        self._main_ident: int | None = None  # the thread that handles signals (SIGUSR1 aborts its chunk)
        self._guard = threading.Lock()
        self._timer: threading.Timer | None = None
        self._finishing = False
        self._previous: dict[int, SignalHandler] = {}

    def request(self, reason: str) -> None:
        """Ask the service to finish the in-flight chunk, commit, and leave its loop (the first reason is kept)."""
        if not self.requested:
            self.reason = reason
        self.requested = True

    def install(self) -> None:
        """Handle SIGTERM/SIGINT (and SIGUSR1, the grace timer's abort); a no-op outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._on_abort)
        self._main_ident = threading.get_ident()

    def disarm(self) -> None:
        """The run is ending: no chunk is abandoned from now on (the grace timer is cancelled)."""
        with self._guard:
            self._finishing = True
        if self._timer is not None:
            self._timer.cancel()

    def restore(self) -> None:
        """Hand the signals back to the handlers they had before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            return
        self.request(f"{name} received")
        # A second signal must still work when a batch hangs: hand both back to their default behaviour.
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        # A chunk that does not finish within the grace period is abandoned (nothing of it is committed yet).
        timer = threading.Timer(self.grace_s, self._abort_now)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _abort_now(self) -> None:
        # Timer thread: interrupt the main thread, which raises StopNow at its next Python instruction.
        with self._guard:
            if self._finishing or self._main_ident is None:
                return
            signal.pthread_kill(self._main_ident, signal.SIGUSR1)

    def _on_abort(self, _signum: int, _frame: FrameType | None) -> None:
        if not self._finishing and self.requested:
            raise StopNow()


__all__ = ["STOP_GRACE_S", "StopControl", "StopNow"]
