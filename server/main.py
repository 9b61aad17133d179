"""`toolkit serve`: bind the socket, load the model into its slots, then run the FastAPI app on uvicorn until
interrupted. The socket is bound first (a port in use fails at once, before a long model load) and the startup line is
printed once the server accepts connections; `--port 0` picks a free port, which that line gives. Connections are
served by server.connections' protocol under server.limits' limits (the cap fitted to the open-file limit)."""
from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.textfile import read_text
from server.api_key import api_key_bytes
from server.limits import Limits


@dataclass
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = 0          # per slot; 0: the model's training context shared by the slots (resolved by validate)
    n_threads: int | None = None
    n_batch: int = 2048
    n_ubatch: int = 512
    cache_type: str = "f16"
    cache_type_v: str | None = None  # values' type (default: the keys')
    use_mmap: bool = True           # map the model file (--mmap), else a copy in huge pages (--no-mmap)
    parallel: int = 4
    context_shift: bool = False     # a full context during generation: shift it (llama-server's --context-shift)
    n_keep: int = 0                 # tokens kept at the start when shifting (--keep; BOS counted as llama.cpp does)
    queue: int = 32
    api_key: str | None = None
    chat_template: str | None = None
    jinja: bool = True              # the file's own Jinja template (llama-server's --jinja, its default), else built-in
    reasoning_format: str = "deepseek"  # --reasoning-format (runtime.reasoning.FORMATS)
    reasoning: str = "auto"         # --reasoning on|off|auto: enable_thinking for the template (auto: by its tags)
    chat_template_kwargs: str | None = None  # --chat-template-kwargs JSON: default template variables
    alias: str | None = None
    strict_model: bool = False
    seed: int = -1
    timeout: float = Limits.timeout
    metrics: bool = False   # GET /metrics (llama-server's --metrics)
    slots: bool = True      # GET /slots (llama-server's --slots / --no-slots)
    embedding: bool = False         # /v1/embeddings (llama-server's --embedding)
    pooling: str | None = None      # --pooling none|mean|cls|last (None: the model's, else none)
    embd_normalize: int = 2         # --embd-normalize (llama-server's: -1 none, 0 max-abs, 1 taxicab, 2 Euclidean, p)


def validate(o: ServeOptions) -> None:
    """Check every option before anything is loaded; resolves -c 0 into the context per slot."""
    for name, value, low in (("-c", o.n_ctx, 0), ("-b", o.n_batch, 1), ("-ub", o.n_ubatch, 1),
                             ("--parallel", o.parallel, 1), ("--queue", o.queue, 0), ("--port", o.port, 0),
                             ("--keep", o.n_keep, 0)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    if o.port > 65535:
        raise UserError(f"--port must be at most 65535, got {o.port}")
    if o.n_threads is not None and o.n_threads < 1:
        raise UserError(f"-t must be at least 1, got {o.n_threads}")
    if not Path(o.model).is_file():
        raise UserError(f"model file {o.model} does not exist")
    from runtime.generate import check_context_memory  # the model's header only: its KV cache bytes per position
    o.n_ctx = check_context_memory(o.model, o.n_ctx, o.cache_type, o.parallel,
                                   f"-c {o.n_ctx} × --parallel {o.parallel}", o.cache_type_v)
    if not (math.isfinite(o.timeout) and o.timeout > 0):
        raise UserError(f"--timeout must be a positive number of seconds, got {o.timeout}")
    if o.api_key is not None:
        api_key_bytes(o.api_key)
    from runtime.embeddings import POOLINGS
    if o.pooling is not None and o.pooling not in POOLINGS:
        raise UserError(f"--pooling must be one of {', '.join(POOLINGS)}, got {o.pooling!r}")
    if o.embd_normalize < -1:
        raise UserError(f"--embd-normalize must be at least -1, got {o.embd_normalize}")
    from runtime.reasoning import check_format, startup_context
    check_format(o.reasoning_format)
    startup_context(o.chat_template_kwargs, o.reasoning)


def chat_template_arg(value: str | None) -> str | None:
    """--chat-template NAME|FILE: a file's text (a Jinja template), else the value itself (a built-in name or an
    inline Jinja template)."""
    if value and not any(c in value for c in "{}\n") and Path(value).is_file():
        return read_text(value, "--chat-template file")
    return value


def bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise UserError(f"cannot resolve --host {host}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(o: ServeOptions) -> None:
    validate(o)  # before the imports and the model load: a wrong flag or a busy port fails at once
    template = chat_template_arg(o.chat_template)
    sock = bind(o.host, o.port)
    try:
        _serve(o, template, sock)
    finally:
        sock.close()


def _serve(o: ServeOptions, template: str | None, sock: socket.socket) -> None:
    import uvicorn

    from server.app import AppConfig, create_app
    from server.embeddings import EmbeddingOptions
    from server.connections import guarded_protocol
    from server.engine import Engine
    from server.logs import log_accept_errors_in_one_line, server_logger
    from server.observability import add_observability

    log = server_logger()
    limits = Limits(timeout=o.timeout).within_open_files()
    engine = Engine(o.model, n_ctx=o.n_ctx, n_threads=o.n_threads, parallel=o.parallel, queue_size=o.queue,
                    chat_template=template, n_batch=o.n_batch, cache_type=o.cache_type, cache_type_v=o.cache_type_v,
                    n_ubatch=o.n_ubatch, context_shift=o.context_shift, n_keep=o.n_keep, jinja=o.jinja,
                    use_mmap=o.use_mmap)
    from runtime.reasoning import startup_context
    engine.chat = engine.chat.with_context(startup_context(o.chat_template_kwargs, o.reasoning))
    try:
        name = o.alias or Path(o.model).name
        app = create_app(engine, AppConfig(name=name, api_key=o.api_key, strict_model=o.strict_model, seed=o.seed,
                                           limits=limits, reasoning_format=o.reasoning_format,
                                           embeddings=EmbeddingOptions(o.embedding, o.pooling, o.embd_normalize)))
        add_observability(app, metrics_endpoint=o.metrics, slots_endpoint=o.slots)
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        hp = engine.hp
        line = (f"toolkit serve: listening on {url} (docs {url}/docs) · model {o.model} ({hp.arch}, "
                f"{hp.n_layer} layers, as {name!r}) · context {engine.n_ctx} tokens per slot, "
                f"{engine.n_ctx * o.parallel} in all (trained {hp.n_ctx_train}; {o.cache_type}/"
                f"{o.cache_type_v or o.cache_type} KV) · {o.parallel} slot(s) batched, "
                f"queue {o.queue} · {engine.n_threads} threads" + (" · API key required" if o.api_key else ""))

        class Server(uvicorn.Server):
            async def startup(self, sockets=None):
                log_accept_errors_in_one_line(asyncio.get_running_loop())
                await super().startup(sockets=sockets)
                if self.started:
                    log.info(line)

            @contextlib.contextmanager
            def capture_signals(self):
                """Ctrl-C or SIGTERM: shut down gracefully and exit 0 (uvicorn would raise the signal again)."""
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

        config = uvicorn.Config(app, http=guarded_protocol(limits), log_config=None, access_log=False,
                                timeout_graceful_shutdown=3, lifespan="off", timeout_keep_alive=limits.keep_alive,
                                backlog=limits.backlog, h11_max_incomplete_event_size=limits.max_header_bytes)
        Server(config).run(sockets=[sock])
        log.info("toolkit serve: stopped")
    finally:
        engine.close()
