"""What one client may take of the server, and for how long (issue 18). A request's head must arrive within `timeout`
seconds of its first byte (a new connection's first request within `timeout` of the connection), its body within
`timeout` seconds of the head; an idle connection is kept `keep_alive` seconds between requests. A head over
`max_header_bytes` is answered 431, a body over `max_body_bytes` 413 (before it is read when its length is declared).
At most `max_connections` connections are open: beyond that, the one that has waited longest for its next request is
closed to make room, or, when every one has a request in progress, the new one is answered 503 at once."""
from __future__ import annotations

import resource
from dataclasses import dataclass, replace

KiB = 1024
MiB = 1024 * KiB
RESERVED_FDS = 64  # the model file, the log, the threads' pipes, the listening socket: not for connections


@dataclass(frozen=True)
class Limits:
    timeout: float = 15.0                 # -to/--timeout (llama-server's name): seconds for a head, then for a body
    keep_alive: int = 5                   # seconds an idle connection is kept between two requests
    max_connections: int = 1024
    backlog: int = 2048                   # connections the kernel queues before they are accepted
    max_header_bytes: int = 64 * KiB
    max_body_bytes: int = 8 * MiB

    def within_open_files(self, soft_limit: int | None = None) -> "Limits":
        """The connection cap and the backlog lowered to fit the process's open-file limit. asyncio accepts up to
        `backlog` connections at each turn of its loop, and a connection is counted (and another closed to make room)
        two turns after it was accepted; the descriptor of the one closed is released a turn later still. So up to
        three turns' worth of accepted connections come on top of the cap: a fourth is kept as a margin."""
        if soft_limit is None:
            soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            return self
        budget = max(soft_limit - RESERVED_FDS, 8)
        backlog = max(min(self.backlog, budget // 8), 1)
        return replace(self, backlog=backlog, max_connections=max(min(self.max_connections, budget - 4 * backlog), 1))

    def describe(self) -> str:
        return (f"head and body each within {self.timeout:g} s, idle connections kept {self.keep_alive} s, at most "
                f"{self.max_connections} connections, headers up to {self.max_header_bytes // KiB} KiB (else 431), "
                f"bodies up to {self.max_body_bytes // MiB} MiB (else 413)")
