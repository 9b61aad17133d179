"""Connection hygiene below the ASGI app, as uvicorn's HTTP/1.1 protocol (h11) extended: the connection cap, the
deadline for a request's head, 431 for a head that is too large, and a graceful close after an answer given before
the request was read (413, 408): the server stops sending, reads and discards what the client still sends for a
moment, then closes, so that the client reads the answer instead of a connection reset. The body's own limits (size,
deadline) are the ASGI app's (server.app.RequestLimits), which answers them in the API's error shape.

Answers given here, with no request to route, are one JSON error in the API's shape and `Connection: close`."""
from __future__ import annotations

import asyncio
import functools
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.limits import Limits

log = logging.getLogger("toolkit.server")
LINGER_SECONDS = 2.0
REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def raw_error(status: int, message: str, code: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                 "server_error", "param": None, "code": code}}).encode()
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


class ConnectionGuard:
    """One per server: the open connections, and of them those waiting for a request (none in progress), the longest
    waiting first — the ones closed to make room."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.open: set["GuardedH11Protocol"] = set()
        self.waiting: dict["GuardedH11Protocol", None] = {}

    def admit(self, conn: "GuardedH11Protocol") -> bool:
        if len(self.open) >= self.limits.max_connections:
            if not self.waiting:
                return False
            self.leave(oldest := next(iter(self.waiting)))
            oldest.transport.close()
        self.open.add(conn)
        return True

    def set_waiting(self, conn: "GuardedH11Protocol", waiting: bool) -> None:
        if not waiting:
            self.waiting.pop(conn, None)
        elif conn in self.open and conn not in self.waiting:
            self.waiting[conn] = None

    def leave(self, conn: "GuardedH11Protocol") -> None:
        self.open.discard(conn)
        self.waiting.pop(conn, None)


class GuardedH11Protocol(H11Protocol):
    def __init__(self, config, server_state, app_state, _loop=None, *, guard: ConnectionGuard):
        super().__init__(config, server_state, app_state, _loop)
        self.guard, self.limits = guard, guard.limits
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_started = False    # a byte of the next request's head has arrived
        self.lingering = False

    # -- the connection's life --------------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if not self.guard.admit(self):
            log.warning("connection refused: %d connections open, each with a request in progress",
                        len(self.guard.open))
            transport.write(raw_error(503, f"the server has {len(self.guard.open)} connections open, each with a "
                                      "request in progress; retry later", "too_many_connections"))
            transport.close()
            return
        self._follow()

    def connection_lost(self, exc) -> None:
        self.guard.leave(self)
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        if self.conn.their_state is h11.IDLE:
            self.head_started = True
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY:  # answered before the body was read (413, 408): end it
            self._linger()
            return
        self._follow()

    # -- the head's deadline and the cap's waiting list -------------------------------------------------------------
    def _follow(self) -> None:
        """After every event: a connection with no request in progress may be closed to make room, and one whose
        next request head has begun (or that has not sent one since it opened) has `timeout` seconds to finish it;
        between requests uvicorn's keep-alive timer closes it."""
        if self.transport.is_closing():
            return
        waiting = self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE
        self.guard.set_waiting(self, waiting)
        if not waiting:
            self.head_started = False
            self._cancel_head_timer()
        elif self.head_timer is None and (self.head_started or self.cycle is None):
            self.head_timer = self.loop.call_later(self.limits.timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timeout(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if not self.head_started:  # nothing sent: an idle connection, closed without a word
            self.transport.close()
            return
        log.warning("request head not received within %g s: connection closed", self.limits.timeout)
        self._refuse(408, f"the request head was not received within {self.limits.timeout:g} s", "request_timeout")

    def send_400_response(self, msg: str) -> None:
        """h11 refused the head; when because it outgrew the limit, that is a 431, not a malformed request."""
        if len(self.conn.trailing_data[0]) <= self.limits.max_header_bytes:
            return super().send_400_response(msg)
        log.warning("request head over %d bytes: answered 431", self.limits.max_header_bytes)
        self._refuse(431, f"the request head (request line and headers) is larger than "
                     f"{self.limits.max_header_bytes} bytes", "headers_too_large")

    # -- ending a connection whose client may still be sending ------------------------------------------------------
    def _refuse(self, status: int, message: str, code: str) -> None:
        self.transport.write(raw_error(status, message, code))
        self._linger()

    def _linger(self) -> None:
        """Stop sending (after what is buffered), read and drop what still comes, close at the client's end of data
        (uvicorn's eof_received lets the transport close) or after LINGER_SECONDS."""
        self.lingering = True
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        self.guard.set_waiting(self, True)  # the first to go when room is needed
        self.flow.resume_reading()
        try:
            self.transport.write_eof()
        except OSError:  # the client is gone already
            self.transport.close()
            return
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def guarded_protocol(limits: Limits):
    """uvicorn's `http` protocol factory for a server with these limits."""
    return functools.partial(GuardedH11Protocol, guard=ConnectionGuard(limits))
