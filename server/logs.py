"""The server's log: plain lines on stderr, one per event, for the server's own logger and the two below it that can
report a client's misdeeds (uvicorn's protocol errors, asyncio's accept errors), with floods rate-limited."""
from __future__ import annotations

import asyncio
import logging
import sys
import time

LOGGERS = ("toolkit.server", "uvicorn.error", "asyncio")


class RateLimit(logging.Filter):
    """Of each kind of failure, at most `burst` lines per `interval` seconds; the next line of that kind after the
    interval says how many were left out. A kind is a record's `kind` (the access log gives one to every answer that
    is not a success: its status), else, for warnings and errors, its logger and message template (not the values, so
    a flood of one failure from many clients is one kind). Other records always pass."""

    def __init__(self, interval: float = 10.0, burst: int = 5, clock=time.monotonic):
        super().__init__()
        self.interval, self.burst, self.clock = interval, burst, clock
        self.windows: dict[object, list] = {}   # kind -> [window start, lines passed, lines left out]

    def filter(self, record: logging.LogRecord) -> bool:
        kind = getattr(record, "kind", None)
        if kind is None:
            if record.levelno < logging.WARNING:
                return True
            kind = (record.name, str(record.msg))
        now = self.clock()
        window = self.windows.get(kind)
        if window is None or now - window[0] >= self.interval:
            left_out = window[2] if window else 0
            self.windows[kind] = [now, 1, 0]
            if left_out:
                record.msg, record.args = (f"{record.getMessage()} [{left_out} more like this left out of the log in "
                                           f"the {self.interval:g} s before]"), ()
            return True
        if window[1] < self.burst:
            window[1] += 1
            return True
        window[2] += 1
        return False


def server_logger() -> logging.Logger:
    """Plain lines on stderr (rich's handler wraps long lines off a terminal), rate-limited."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(RateLimit())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO if name == "toolkit.server" else logging.WARNING)
        logger.propagate = False
    return logging.getLogger("toolkit.server")


def log_accept_errors_in_one_line(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio reports a failed accept (out of descriptors or memory: it then pauses accepting for a second) with a
    traceback through the loop's exception handler; here it is one warning line, rate-limited like the others. Every
    other report keeps asyncio's default handling."""
    log = logging.getLogger("asyncio")

    def handler(loop, context):
        exc = context.get("exception")
        if str(context.get("message", "")).startswith("socket.accept() out of system resource") and \
                isinstance(exc, OSError):
            log.warning("new connections refused for a moment: %s", exc.strerror or exc)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
