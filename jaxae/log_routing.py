"""Log routing as contexts: within one, chosen loggers (and the errors of dying threads) go
to a file instead of the console; after it, they are as they were. :mod:`jaxae.checkpoint`
routes Orbax's logs to ``orbax.log`` beside a run's checkpoints while they are open."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class QuietFileHandler(logging.FileHandler):
    """A log file created at its first record, whose own write errors (the disk is full)
    are dropped instead of printed."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True)
        self.setLevel(logging.WARNING)

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def _open(self):
        """The file, never through a link: a link there would receive the tracebacks elsewhere."""
        descriptor = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        return os.fdopen(descriptor, "a", encoding=self.encoding)


# Routings open now: several runs' checkpoints may be open at once and close in any order,
# so each logger (and the thread hooks) goes back as it was only when its last routing ends.
_ROUTES: dict[str, list[logging.Handler]] = {}
_BEFORE: dict[str, Any] = {}
# routings that must outlive their owner (a failed save's writers report until the process ends)
ROUTED_TILL_EXIT: list[contextlib.ExitStack] = []


@contextlib.contextmanager
def _routed(
    name: str, handler: logging.Handler, route: Callable[[], Any], restore: Callable[[Any], None]
) -> Iterator[None]:
    """Within: ``route()`` has been called once for all routings of ``name`` open at once;
    after the last, ``restore`` receives what the first ``route()`` returned."""
    if not _ROUTES.get(name):
        _BEFORE[name] = route()
    _ROUTES.setdefault(name, []).append(handler)
    try:
        yield
    finally:
        if _ROUTES is not None:  # None: a routing kept till exit, closed as Python empties this module
            _ROUTES[name].remove(handler)
            if not _ROUTES[name]:
                restore(_BEFORE.pop(name))


@contextlib.contextmanager
def routed_logs(handler: logging.Handler, names: tuple[str, ...]) -> Iterator[None]:
    """Within: the loggers ``names`` write to ``handler`` and no further; after, as they were."""
    with contextlib.ExitStack() as stack:
        for name in names:
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            stack.callback(logger.removeHandler, handler)

            def route(logger: logging.Logger = logger) -> bool:
                propagate, logger.propagate = logger.propagate, False
                return propagate

            def restore(propagate: bool, logger: logging.Logger = logger) -> None:
                logger.propagate = propagate

            stack.enter_context(_routed(f"logger {name}", handler, route, restore))
        yield


# Python's words for a coroutine collected without ever running (Orbax's writes that a
# failed save left queued on an event loop it closed)
NEVER_AWAITED = re.compile(r"coroutine '.*' was never awaited")


@contextlib.contextmanager
def routed_thread_errors(handler: logging.Handler) -> Iterator[None]:
    """Within: what Orbax's writers report when a save fails goes to ``handler`` instead of
    the console: the errors of threads that die, unraisable ones (TensorStore's threads
    calling back into an event loop Orbax closed) and the warnings about the coroutines left
    unawaited. After, ``threading.excepthook``, ``sys.unraisablehook`` and
    ``warnings.showwarning`` are back."""
    log = logging.getLogger("jaxae.checkpoint.threads")
    log.propagate = False

    def route() -> tuple:
        hooks = threading.excepthook, sys.unraisablehook, warnings.showwarning
        show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, RuntimeWarning) and NEVER_AWAITED.match(str(message)):
                log.warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)
            else:
                show(message, category, filename, lineno, file, line)

        threading.excepthook = lambda args: log.error("thread %s died", args.thread, exc_info=args.exc_value)
        sys.unraisablehook = lambda unraisable: log.error(
            "%s", unraisable.err_msg or "unraisable exception", exc_info=unraisable.exc_value
        )
        warnings.showwarning = showwarning
        return hooks

    def restore(hooks: tuple) -> None:
        threading.excepthook, sys.unraisablehook, warnings.showwarning = hooks

    log.addHandler(handler)
    try:
        with _routed("thread hooks", handler, route, restore):
            yield
    finally:
        log.removeHandler(handler)
