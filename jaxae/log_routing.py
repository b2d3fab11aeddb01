"""Log routing as contexts: within one, chosen loggers (and the errors of dying threads) go
to a file instead of the console; after it, they are as they were. :mod:`jaxae.checkpoint`
routes Orbax's logs to ``orbax.log`` beside a run's checkpoints while they are open."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
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


@contextlib.contextmanager
def routed_thread_errors(handler: logging.Handler) -> Iterator[None]:
    """Within: the errors of threads that die (Orbax's writers and their event loops after a
    failed save) and unraisable ones go to ``handler`` instead of the console; after, the
    process's ``threading.excepthook`` and ``sys.unraisablehook`` are back."""
    log = logging.getLogger("jaxae.checkpoint.threads")
    log.propagate = False

    def route() -> tuple:
        hooks = threading.excepthook, sys.unraisablehook
        threading.excepthook = lambda args: log.error("thread %s died", args.thread, exc_info=args.exc_value)
        sys.unraisablehook = lambda unraisable: log.error(
            "%s", unraisable.err_msg or "unraisable exception", exc_info=unraisable.exc_value
        )
        return hooks

    def restore(hooks: tuple) -> None:
        threading.excepthook, sys.unraisablehook = hooks

    log.addHandler(handler)
    try:
        with _routed("thread hooks", handler, route, restore):
            yield
    finally:
        log.removeHandler(handler)
