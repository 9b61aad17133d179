"""`toolkit serve`: an OpenAI- and llama.cpp-compatible HTTP server (FastAPI + uvicorn) over the runtime.

`engine` (slots, the bounded queue, generation on worker threads), `schemas` (request bodies), `app` (routes,
errors, auth, access log), `main` (options, socket, uvicorn)."""
from server.main import ServeOptions, serve

__all__ = ["ServeOptions", "serve"]
