"""Ctrl-C and SIGTERM, handled one way for every command and for the library.

`Stop` is installed around a command (or a library call) and restores the handlers it found when it ends. The first
signal either calls `on_request` (a search asks Ray to save its experiment and wind down) or, with no such callback,
raises KeyboardInterrupt (a training run stops after its last saved epoch); a second signal always raises at once.
`critical()` holds both signals while a file is being written (torch.save cut short by KeyboardInterrupt fails
again while closing its zip file), then delivers them to whatever handler is in place.

Handlers can only be set in the main thread; elsewhere (a Ray worker thread, a notebook's background thread) both
are no-ops. A signal that the process was started to ignore (`nohup`, `&` in a script) stays ignored.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Stop:
    def __init__(self, on_request: Callable[[], None] | None = None, restore: tuple[int, ...] = ()):
        """`restore`: other signals whose handlers the block may change (Ray Tune sets SIGUSR1's), put back at the end."""
        self.on_request, self.restore = on_request, restore
        self.requested = False
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested or self.on_request is None:
            self.requested = True
            raise KeyboardInterrupt
        self.requested = True
        self.on_request()

    def __enter__(self) -> Stop:
        if _main_thread():
            self._old = {s: signal.getsignal(s) for s in self.restore}
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._old = {}


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the block; afterwards, deliver what arrived to the handlers in place."""
    if not _main_thread():
        yield
        return
    received: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)
