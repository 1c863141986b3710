"""The one exiv2 engine every XMP reader and writer of this package uses (ground layer: imports nothing of ours).

``outputs/xmp.py`` writes our sidecars and ``ratings/xmp.py`` reads a person's stars; both go through libexiv2 (the
``exiv2`` Python binding, whose wheel ships it: the XMP engine digiKam uses). Its XMP toolkit is initialised and our
namespace registered once per process, and its messages are captured one parse at a time (the "exiv2" logger is
process-wide), so the two readers share the lock rather than each keeping its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

__all__ = ["NS_PREFIX", "NS_URI", "Exiv2Messages", "captured_exiv2_messages", "exiv2_module"]

NS_URI = "http://ns.pmllm-batch.org/xmp/1.0/"  # our namespace: an identifier, not a web page
NS_PREFIX = "pmllm"

_engine_lock = threading.Lock()
_messages_lock = threading.Lock()  # one capture at a time: the "exiv2" logger is process-wide
_engine_ready = False


class Exiv2Messages(logging.Handler):
    """Collects libexiv2's messages (python-exiv2 logs them to the "exiv2" logger) while a packet is parsed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


def exiv2_module() -> ModuleType:
    """The ``exiv2`` module, with the XMP toolkit initialised and our namespace registered (once per process)."""
    global _engine_ready
    import exiv2  # python-exiv2 (PyPI "exiv2"); its wheel ships libexiv2

    if not _engine_ready:
        with _engine_lock:
            if not _engine_ready:
                exiv2.XmpParser.initialize()
                exiv2.XmpProperties.registerNs(NS_URI, NS_PREFIX)
                _engine_ready = True
    return exiv2


@contextmanager
def captured_exiv2_messages() -> Iterator[Exiv2Messages]:
    """libexiv2 reports a packet it cannot decode only as a log message (and returns no properties): capture them
    instead of letting them reach the user's terminal, and let the caller decide."""
    logger = logging.getLogger("exiv2")
    handler = Exiv2Messages()
    with _messages_lock:
        propagate = logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        try:
            yield handler
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
