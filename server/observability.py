"""llama-server's monitoring routes on the app: GET /metrics (Prometheus text, with `--metrics`), GET /slots (each
slot's state, unless `--no-slots`) and GET /props (the server's settings); when an endpoint is off it answers 501
`not_supported_error` as llama-server does, and is left out of the OpenAPI document. All need the API key, as there.

Every generation's counts reach server.metrics.Metrics when its response has ended, from what the request returned
(its GenResult: prompt tokens evaluated and cached with their time, tokens generated with theirs); requests waiting
and generating, and the tokens in the slots' KV caches, are read when /metrics is rendered."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import Response

from runtime.sampling import SamplingParams
from server.app import ERRORS, ApiError
from server.engine import Engine, GenRequest, GenResult, Slot
from server.metrics import Gauges, Metrics
from server.schemas import ErrorResponse

_OFF = {"metrics": "This server does not support metrics endpoint. Start it with `--metrics`",
        "slots": "This server does not support slots endpoint. Start it with `--slots`"}
_501 = {501: {"model": ErrorResponse, "description": "The endpoint is off (llama-server's answer)"}}


@dataclass
class Task:
    """A generation as /slots shows it: llama-server's task id, the request, and its result once it has ended."""
    id: int
    request: GenRequest
    result: GenResult | None = None


def add_observability(app: FastAPI, metrics_endpoint: bool = False, slots_endpoint: bool = True,
                      metrics: Metrics | None = None) -> Metrics:
    """Register the three routes and the recording on an app made by server.app.create_app (before it serves).
    `metrics`: one the engine also reports to (its forward passes), else a new one."""
    engine: Engine = app.state.engine
    cfg = app.state.cfg
    metrics = metrics or Metrics()
    tasks = TaskBook()
    app.state.metrics = metrics
    app.add_middleware(RecordGenerations, metrics=metrics, tasks=tasks)

    @app.get("/metrics", summary="Prometheus metrics (llama-server's names; with --metrics)",
             responses={**ERRORS["models"], **_501, 200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                                         "description": "Prometheus text format 0.0.4"}},
             response_class=Response, include_in_schema=metrics_endpoint)
    async def get_metrics():
        if not metrics_endpoint:
            raise ApiError(501, _OFF["metrics"], "not_supported_error")
        text = metrics.render(Gauges(requests_processing=engine.n_processing, requests_deferred=engine.n_waiting,
                                     kv_cache_tokens=sum(len(s.session.tokens) for s in engine.slots),
                                     kv_cache_capacity=sum(s.session.n_ctx for s in engine.slots),
                                     n_decode=engine.base.batcher.n_passes,
                                     n_decode_sequences=engine.base.batcher.n_sequences))
        return Response(text, media_type="text/plain; version=0.0.4",
                        headers={"Process-Start-Time-Unix": str(int(metrics.t_start))})

    @app.get("/slots", summary="Each slot's state (llama-server's; off with --no-slots)",
             responses={**ERRORS["models"], **_501, 503: {"model": ErrorResponse, "description":
                                                          "fail_on_no_slot was given and no slot is idle"}},
             include_in_schema=slots_endpoint)
    async def get_slots(fail_on_no_slot: str = ""):
        """fail_on_no_slot: any value answers 503 when no slot is idle (llama-server's test is "not empty")."""
        if not slots_endpoint:
            raise ApiError(501, _OFF["slots"], "not_supported_error")
        live = tasks.live_by_slot()
        if fail_on_no_slot and all(s.id in live for s in engine.slots):
            raise ApiError(503, "no slot available", "unavailable_error")
        return [slot_json(engine, s, live.get(s.id) or tasks.last.get(s.id), s.id in live) for s in engine.slots]

    @app.get("/props", summary="The server's settings (llama-server's fields that apply)", responses=ERRORS["models"])
    async def get_props():
        tok = engine.tokenizer
        defaults = GenRequest([], -1, SamplingParams(seed=cfg.seed))
        props = {"default_generation_settings": {"params": params_json(defaults), "n_ctx": engine.n_ctx},
                 "total_slots": len(engine.slots), "model_alias": cfg.name, "model_path": engine.model_path,
                 "modalities": {"vision": False, "video": False, "audio": False},
                 "endpoint_slots": slots_endpoint, "endpoint_props": False, "endpoint_metrics": metrics_endpoint,
                 "bos_token": tok.token_text(tok.bos_id) if tok.bos_id is not None else "",
                 "eos_token": tok.token_text(tok.eos_id) if tok.eos_id is not None else "", "is_sleeping": False}
        source = getattr(engine.chat, "source", None)   # a Jinja template (a built-in format has no source text)
        return {**props, "chat_template": source} if source else props

    return metrics


class TaskBook:
    """The generations running (their tickets, while their jobs run) and each slot's last finished one."""

    def __init__(self):
        self.ids = itertools.count()
        self.running: dict[int, tuple[int, dict]] = {}   # id(request state) -> (task id, the request's state)
        self.last: dict[int, Task] = {}                   # slot id -> its last finished task

    def live_by_slot(self) -> dict[int, Task]:
        """The tasks whose job runs on a slot: server.app's generate() puts the request's Ticket in its state; its
        job is set once it has a slot, and the result once it has ended."""
        out = {}
        for task_id, state in list(self.running.values()):
            ticket = state.get("ticket")
            if ticket is not None and ticket.job is not None and not ticket.closed and state.get("result") is None:
                out[ticket.job.slot.id] = Task(task_id, ticket.job.req)
        return out


def slot_json(engine: Engine, slot: Slot, task: Task | None, processing: bool) -> dict:
    """One slot as llama-server's server_slot::to_json(only_metrics=true) shows it."""
    out = {"id": slot.id, "n_ctx": slot.session.n_ctx, "speculative": False, "is_processing": processing}
    if task is None:
        return out
    req, r = task.request, task.result
    n_context = len(slot.session.tokens)
    if r is not None:
        evaluated = r.timings()["prompt_n"]
        n_decoded, has_new_line = r.n_predicted, any("\n" in c.text for c in r.choices or [r])
        counts = {"n_prompt_tokens_processed": evaluated, "n_prompt_tokens_cache": r.n_prompt - evaluated}
    else:  # still generating: the tokens sampled so far (the last one enters the context with the next pass)
        generated = slot.session.tokens[len(req.prompt):] if n_context > len(req.prompt) else []
        n_decoded, has_new_line = slot.n_decoded, "\n" in engine.tokenizer.decode(generated)
        counts = {}   # the prompt's evaluated and cached counts come with the result
    return {**out, "id_task": task.id, "n_prompt_tokens": n_context, **counts, "params": params_json(req),
            "next_token": [{"has_next_token": r is None, "has_new_line": has_new_line,
                            "n_remain": -1 if req.n_predict < 0 else max(req.n_predict * req.n - n_decoded, 0),
                            "n_decoded": n_decoded}]}


def params_json(req: GenRequest) -> dict:
    """A request's settings as llama-server's task_params::to_json(only_metrics=true) names them, those we have."""
    p = req.params
    return {"seed": p.seed, "temperature": p.temp, "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p,
            "repeat_last_n": p.repeat_last_n, "repeat_penalty": p.repeat_penalty,
            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
            "top_n_sigma": p.top_n_sigma, "xtc_probability": p.xtc_probability, "xtc_threshold": p.xtc_threshold,
            "typical_p": p.typ_p, "dry_multiplier": p.dry_multiplier, "dry_base": p.dry_base,
            "dry_allowed_length": p.dry_allowed_length, "dry_penalty_last_n": p.dry_penalty_last_n,
            "mirostat": p.mirostat, "mirostat_tau": p.mirostat_tau, "mirostat_eta": p.mirostat_eta,
            "samplers": list(p.samplers), "max_tokens": req.n_predict, "n_predict": req.n_predict, "ignore_eos": req.ignore_eos,
            "n_probs": req.n_probs or 0}


class RecordGenerations:
    """Gives each request a task id, keeps its state while it runs (server.app's generate() puts the request's
    Ticket there) and counts what its result reports into the metrics, keeping it as its slot's last task, just
    before the response's last bytes are sent (a client that reads /metrics after its answer finds it counted), or
    when the response ends otherwise (a client gone after the result)."""

    def __init__(self, app, metrics: Metrics, tasks: TaskBook):
        self.app, self.metrics, self.tasks = app, metrics, tasks

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        task_id, key, done = next(self.tasks.ids), id(state), [False]
        self.tasks.running[key] = (task_id, state)

        def finish():
            r: GenResult | None = state.get("result")
            ticket = state.get("ticket")
            if not done[0] and r is not None and ticket is not None and ticket.job is not None:
                done[0] = True
                record(self.metrics, r)
                self.tasks.last[r.slot_id] = Task(task_id, ticket.job.req, r)

        async def send_counted(message):
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()
            await send(message)
        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.tasks.running.pop(key, None)
            finish()


def record(metrics: Metrics, r: GenResult) -> None:
    """One generation's counts: the prompt tokens evaluated (timings' prompt_n) and those its slot's cache held, the
    tokens of each choice with their time, and the longest sequence."""
    evaluated = r.timings()["prompt_n"]
    metrics.on_prompt(evaluated, r.prompt_ms / 1000.0)
    metrics.on_prompt_cached(r.n_prompt - evaluated)
    for c in r.choices or [r]:
        metrics.on_generated(c.n_predicted, c.predicted_ms / 1000.0)
        metrics.on_sequence(r.n_prompt + c.n_predicted)
