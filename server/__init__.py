"""`toolkit serve`: an OpenAI- and llama.cpp-compatible HTTP server (FastAPI + uvicorn) over the runtime.

`engine` (slots, the bounded queue, generation on worker threads), `schemas` (request bodies), `app` (routes,
errors, auth, request limits, access log), `limits` (what a client may take: sizes, deadlines, connections),
`connections` (uvicorn's HTTP/1.1 protocol with the connection cap, the head's deadline, 431, lingering close),
`logs` (the log, rate-limited), `main` (options, socket, uvicorn)."""
from server.main import ServeOptions, serve

__all__ = ["ServeOptions", "serve"]
