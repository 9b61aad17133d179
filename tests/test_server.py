"""`toolkit serve` as a client sees it: one server process (stories260K, a real trained model, f32), the official
`openai` client and httpx against it. Oracles: `toolkit run` in its own process for every generated text (greedy and
seeded sampling), sentencepiece for /tokenize, and the server's own /health for slot use under load and after
disconnects."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import pytest

from common.ggufio import GGUFFile
from tests.helpers import REPO, TOOLKIT

KEY = "sk-test-1234"
NAME = "stories"
N_CTX = 4096  # endless requests (n_predict -1) then take seconds: the disconnect tests need that
LONG = 1000   # tokens per load-test request: long enough that 40 requests arrive while the first ones run
PROMPT = "Once upon a time"
CHAT = "Tell me a story about a cat"
SEED = 7


@pytest.fixture(scope="module")
def model(stories260k_f32):
    return stories260k_f32


def _run(model, *args, stdin=None) -> subprocess.Popen:
    cmd = [*TOOLKIT, "run", "-m", str(model), "-c", str(N_CTX), "-t", "1", "-s", str(SEED), *map(str, args)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={k: v for k, v in os.environ.items() if k != "COLUMNS"})


@pytest.fixture(scope="module")
def expected(model):
    """What `toolkit run` generates (the prompt it echoes removed), computed in parallel processes."""
    procs = {
        "greedy48": (_run(model, "-p", PROMPT, "-n", 48, "--temp", 0), None),
        "long": (_run(model, "-p", PROMPT, "-n", LONG, "--temp", 0), None),
        "sampled": (_run(model, "-p", PROMPT, "-n", 40, "--temp", 0.8), None),
        "chat": (_run(model, "-cnv", "-n", 32, "--temp", 0), CHAT + "\n"),
    }
    out = {}
    for name, (p, stdin) in procs.items():
        stdout, stderr = p.communicate(stdin, timeout=120)
        assert p.returncode == 0, stderr
        if name == "chat":  # "\n> " reply "\n> " (end of input) "\n"
            assert stdout.startswith("\n> ") and stdout.endswith("\n> \n"), stdout
            out[name] = stdout[3:-4]
        else:
            assert stdout.startswith(PROMPT) and stdout.endswith("\n")
            out[name] = stdout[len(PROMPT):-1]
    assert len(out["greedy48"]) > 100 and out["long"].startswith(out["greedy48"][:100])
    return out


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log_path):
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self) -> str:
        return self.log_path.read_text()

    def client(self, key: str | None = KEY, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"} if key else {},
                            timeout=60, **kw)

    def health(self) -> dict:
        r = httpx.get(self.url + "/health", timeout=5)
        assert r.status_code == 200
        return r.json()


def _serve(model, log_path, *args) -> Server:
    """`toolkit serve` on a free port, once it accepts connections."""
    with open(log_path, "w") as err:
        proc = subprocess.Popen([*TOOLKIT, "serve", "-m", str(model), "--port", "0", "-t", "1", *map(str, args)],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    url = None
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        for line in log_path.read_text().splitlines():
            if "listening on http://" in line:
                url = line.split("listening on ")[1].split()[0]
        time.sleep(0.05)
    assert url, log_path.read_text()
    srv = Server(proc, url, log_path)
    assert srv.health()["status"] == "ok"
    return srv


def _stop(srv: Server) -> None:
    """Ctrl-C: exit 0, and no traceback or internal error logged on the way."""
    srv.proc.send_signal(signal.SIGINT)
    try:
        assert srv.proc.wait(timeout=20) == 0, srv.log()
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    assert "Traceback" not in srv.log() and "internal error" not in srv.log(), srv.log()


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    srv = _serve(model, tmp_path_factory.mktemp("serve-log") / "stderr.txt", "-c", N_CTX, "--parallel", 2,
                 "--queue", 3, "--api-key", KEY, "--alias", NAME, "--strict-model")
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def sse_events(lines) -> list[str]:
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


# -- the OpenAI client: same text as `toolkit run` ---------------------------------------------------------------------
def test_openai_text_completion(oai, expected):
    r = oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=48, temperature=0, seed=SEED)
    assert r.choices[0].text == expected["greedy48"]
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 48 and r.usage.prompt_tokens == 5  # BOS + 4 (checked in test_tokenize)
    assert r.model == NAME and r.object == "text_completion"
    chunks = list(oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=48, temperature=0, seed=SEED,
                                         stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected["greedy48"]
    assert len([c for c in chunks if c.choices]) > 10  # streamed piece by piece, not in one chunk
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 48


def test_openai_chat_completion(oai, expected):
    messages = [{"role": "user", "content": CHAT}]
    r = oai.chat.completions.create(model=NAME, messages=messages, max_tokens=32, temperature=0, seed=SEED)
    assert r.choices[0].message.content == expected["chat"] and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    stream = oai.chat.completions.create(model=NAME, messages=messages, max_tokens=32, temperature=0, seed=SEED,
                                         stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected["chat"]
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_openai_client_errors(server, oai):
    with pytest.raises(openai.NotFoundError):  # --strict-model
        oai.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=4)
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert [m.id for m in oai.models.list()] == [NAME]


# -- llama.cpp's native routes ----------------------------------------------------------------------------------------
def test_completion_native(server, expected):
    with server.client() as c:
        r = c.post("/completion", json={"prompt": PROMPT, "n_predict": 48, "temperature": 0, "seed": SEED,
                                        "cache_prompt": False})
        assert r.status_code == 200
        body = r.json()
        assert body["content"] == expected["greedy48"]
        assert body["stop"] is True and body["stop_type"] == "limit" and body["stopping_word"] == ""
        assert body["tokens_predicted"] == 48 and body["tokens_evaluated"] == 5
        t = body["timings"]
        assert t["predicted_n"] == 48 and t["prompt_n"] == 5 and t["predicted_per_second"] > 0
        # the same prompt again: only its last token is evaluated (the rest is in the slot's cache), same text
        again = c.post("/completion", json={"prompt": PROMPT, "n_predict": 48, "temperature": 0}).json()
        assert again["content"] == expected["greedy48"] and again["timings"]["prompt_n"] == 1
        assert again["tokens_evaluated"] == 5
        assert body["generation_settings"]["n_ctx"] == N_CTX and body["model"] == NAME

        with c.stream("POST", "/completion", json={"prompt": PROMPT, "n_predict": 48, "temperature": 0,
                                                   "stream": True}) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(e) for e in sse_events(s.iter_lines())]  # no [DONE] on llama.cpp's route
        assert all(e["stop"] is False for e in events[:-1]) and events[-1]["stop"] is True
        assert "".join(e["content"] for e in events) == expected["greedy48"]
        assert events[-1]["tokens_predicted"] == 48 and events[-1]["stop_type"] == "limit"

        # seeded sampling gives `toolkit run -s 7 --temp 0.8`'s text too (same sampler defaults)
        r = c.post("/completion", json={"prompt": PROMPT, "n_predict": 40, "temperature": 0.8, "seed": SEED})
        assert r.json()["content"] == expected["sampled"]


def test_stop_strings(server, oai, expected):
    text = expected["greedy48"]
    word = next(w for w in text.split() if len(w) > 3 and text.index(w) > 10)
    cut = text[:text.index(word)]
    with server.client() as c:
        body = c.post("/completion", json={"prompt": PROMPT, "n_predict": 48, "temperature": 0,
                                           "stop": [word, "zzzz"]}).json()
        assert body["content"] == cut and body["stop_type"] == "word" and body["stopping_word"] == word
    r = oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=48, temperature=0, stop=word)
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    chunks = list(oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=48, temperature=0, stop=[word],
                                         stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut


def test_tokenize_detokenize(server, shared_fixtures):
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=str(shared_fixtures / "stories260K" / "tokenizer.model"))
    text = "Once upon a time, Lily saw a big dog."
    with server.client() as c:
        plain = c.post("/tokenize", json={"content": text}).json()["tokens"]
        assert plain == sp.encode(text)
        assert c.post("/tokenize", json={"content": text, "add_special": True}).json()["tokens"] == [sp.bos_id()] + plain
        assert len(c.post("/tokenize", json={"content": PROMPT, "add_special": True}).json()["tokens"]) == 5
        pieces = c.post("/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
        assert [p["id"] for p in pieces] == plain and all(isinstance(p["piece"], (str, list)) for p in pieces)
        assert c.post("/detokenize", json={"tokens": plain}).json()["content"].strip() == text


def test_health_models_docs(server):
    assert server.health() == {"status": "ok", "slots_idle": 2, "slots_processing": 0, "requests_waiting": 0}
    with server.client() as c:
        data = c.get("/v1/models").json()["data"]
        assert [m["id"] for m in data] == [NAME] and data[0]["meta"]["n_ctx"] == N_CTX
        assert "swagger" in c.get("/docs").text.lower()
        paths = c.get("/openapi.json").json()["paths"]
        for p in ("/health", "/v1/models", "/v1/completions", "/v1/chat/completions", "/completion", "/tokenize",
                  "/detokenize"):
            assert p in paths


@pytest.mark.parametrize("route", ["/v1/models", "/docs", "/completion", "/v1/chat/completions", "/tokenize"])
@pytest.mark.parametrize("key", [None, "sk-wrong", KEY[:-1]])
def test_auth(server, route, key):
    with server.client(key) as c:
        r = c.get(route) if route in ("/v1/models", "/docs") else c.post(route, json={"prompt": "x"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["message"]
    assert httpx.get(server.url + "/health").status_code == 200  # the one open route


TOO_LONG = "dog " * (N_CTX + 100)
BAD = [
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}', 400, "json_invalid"),
    ("/completion", b"{prompt: 'hi'}", 400, "json_invalid"),
    ("/completion", b"[1, 2]", 400, None),
    ("/completion", {"prompt": 5}, 400, None),
    ("/completion", {"prompt": "hi", "n_predict": "many"}, 400, None),
    ("/completion", {"prompt": "hi", "temperature": "hot"}, 400, None),
    ("/completion", {"prompt": "hi", "stop": 3}, 400, None),
    ("/completion", {"prompt": "hi", "n_predict": -5}, 400, None),
    ("/completion", {"prompt": "hi", "top_p": 1.5}, 400, None),
    ("/completion", {"prompt": [1, 99999]}, 400, None),
    ("/completion", {"prompt": []}, 400, None),
    ("/completion", {}, 400, None),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": 2.5}, 400, None),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "n": 99}, 400, "invalid_value"),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "tools": [{}]}, 400, "unsupported_parameter"),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "tools": [{}]}, 400,
     None),  # a malformed tool (tests/test_tools.py has the tool calls)
    ("/v1/completions", {"model": NAME, "prompt": ["a", "b"]}, 400, None),
    ("/v1/chat/completions", {"model": NAME, "messages": "hi"}, 400, None),
    ("/v1/chat/completions", {"model": NAME, "messages": []}, 400, None),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": 5}]}, 400, None),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "stream": "maybe"},
     400, None),
    # unknown model name (the server runs with --strict-model)
    ("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "model_not_found"),
    ("/v1/completions", {"model": "llama-70b", "prompt": "hi"}, 404, "model_not_found"),
    # a prompt longer than the context; max_tokens beyond the context (streamed too: refused before streaming)
    ("/v1/completions", {"model": NAME, "prompt": TOO_LONG}, 400, "context_length_exceeded"),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": TOO_LONG}], "stream": True},
     400, "context_length_exceeded"),
    ("/completion", {"prompt": TOO_LONG, "stream": True}, 400, "context_length_exceeded"),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": N_CTX}, 400, "context_length_exceeded"),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 10 * N_CTX, "stream": True}, 400, "context_length_exceeded"),
    ("/completion", {"prompt": "hi", "n_predict": N_CTX}, 400, "context_length_exceeded"),
    ("/detokenize", {"tokens": [-1]}, 400, None),
    ("/detokenize", {"tokens": "abc"}, 400, None),
    ("/tokenize", {"content": None}, 400, None),
    ("/v1/nothing", {}, 404, None),
]


@pytest.fixture(scope="module")
def openapi(server) -> dict:
    with server.client() as c:
        return c.get("/openapi.json").json()


@pytest.mark.parametrize("route,body,status,code", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_requests(server, openapi, route, body, status, code):
    with server.client() as c:
        r = c.post(route, content=body) if isinstance(body, bytes) else c.post(route, json=body)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and err["type"]
        if code:
            assert err["code"] == code, err
    if route in openapi["paths"]:  # the status is one the OpenAPI document states for the route
        assert str(status) in openapi["paths"][route]["post"]["responses"], (route, status)
    assert server.health() == {"status": "ok", "slots_idle": 2, "slots_processing": 0, "requests_waiting": 0}


# issue 18: each of these answered 500 (a lone surrogate: UnicodeEncodeError; a non-finite number: the echoed
# generation_settings could not be serialized) or held a slot (100 stop strings of 10,000 characters); now a 400
# naming the field
SURROGATE = "a\ud800b"
CHAT_HI = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
REJECTED = [
    ("/completion", {"prompt": SURROGATE}, "prompt", "lone surrogate U+D800 at character 1"),
    ("/completion", {"prompt": "hi", "stop": ["ok", SURROGATE]}, "stop.1", "lone surrogate"),
    ("/v1/completions", {"model": NAME, "prompt": SURROGATE}, "prompt", "lone surrogate"),
    ("/v1/completions", {"model": NAME, "prompt": [SURROGATE]}, "prompt.0", "lone surrogate"),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "stop": SURROGATE}, "stop", "lone surrogate"),
    ("/v1/chat/completions", {**CHAT_HI, "messages": [{"role": "user", "content": SURROGATE}]},
     "messages.0.content", "lone surrogate"),
    ("/v1/chat/completions", {**CHAT_HI, "messages": [{"role": "user", "content": [{"type": "text",
                                                                                    "text": SURROGATE}]}]},
     "messages.0.content.0.text", "lone surrogate"),
    ("/v1/chat/completions", {**CHAT_HI, "model": SURROGATE}, "model", "lone surrogate"),
    ("/tokenize", {"content": SURROGATE}, "content", "lone surrogate"),
    ("/completion", b'{"prompt": "hi", "temperature": 1e309}', "temperature", "finite number"),
    ("/completion", b'{"prompt": "hi", "repeat_penalty": Infinity}', "repeat_penalty", "finite number"),
    ("/completion", b'{"prompt": "hi", "top_p": NaN}', "top_p", "finite number"),
    ("/v1/completions", b'{"prompt": "hi", "temperature": -Infinity}', "temperature", "finite number"),
    ("/v1/completions", b'{"prompt": "hi", "frequency_penalty": NaN}', "frequency_penalty", "finite number"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "min_p": 1e999}', "min_p",
     "finite number"),
    ("/completion", {"prompt": "hi", "repeat_penalty": 0}, "repeat_penalty", "greater than 0"),
    ("/completion", {"prompt": "hi", "stop": ["x"] * 17}, "stop", "at most 16 items"),
    ("/completion", {"prompt": "hi", "stop": ["x" * 257]}, "stop.0", "at most 256 characters"),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "stop": "x" * 257}, "stop", "at most 256 characters"),
    ("/v1/chat/completions", {**CHAT_HI, "stop": ["x" * 10000] * 100}, "stop", "at most 16 items"),
]


@pytest.mark.parametrize("route,body,param,text", REJECTED, ids=[f"{i}-{r[2]}" for i, r in enumerate(REJECTED)])
def test_rejected_fields(server, route, body, param, text):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()  # \ud800 as a JSON escape
    with server.client() as c:
        r = c.post(route, content=raw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "invalid_value" and err["type"] == "invalid_request_error", err
    assert err["message"].startswith(f"{param}: ") and text in err["message"], err
    _log_line(server, f'"POST {route}" 400')


@pytest.mark.parametrize("settings", [{"temperature": 1e-310}, {"temperature": 5e-324},
                                      {"repeat_penalty": 1e-320, "top_k": 0, "top_p": 1.0, "min_p": 0.0}])
def test_extreme_sampling_settings(server, expected, settings):
    """Issue 18: these answered 500 ("Probabilities contain NaN", a zero-size reduction). A subnormal temperature
    samples at its limit, greedily; a subnormal penalty makes the repeated tokens win (and the text differs)."""
    with server.client() as c:
        r = c.post("/completion", json={"prompt": PROMPT, "n_predict": 48, "seed": SEED, **settings})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens_predicted"] == 48
    assert (body["content"] == expected["greedy48"]) == ("temperature" in settings), body["content"]


def test_openapi_states_the_statuses(openapi):
    """Validation errors are 400s in the document too (FastAPI's default says 422), in the one error shape."""
    assert "422" not in json.dumps({p: {m: op["responses"] for m, op in ops.items()}
                                    for p, ops in openapi["paths"].items()})
    assert "HTTPValidationError" not in openapi["components"]["schemas"]
    for route in ("/v1/completions", "/v1/chat/completions", "/completion", "/tokenize", "/detokenize"):
        responses = openapi["paths"][route]["post"]["responses"]
        assert {"200", "400", "401"} <= set(responses), (route, responses)
        assert responses["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
    assert openapi["components"]["schemas"]["ErrorResponse"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorDetail"}
    temperature = openapi["components"]["schemas"]["LlamaCompletionRequest"]["properties"]["temperature"]
    assert temperature["minimum"] == 0


# -- a damaged model: the server's fault, answered without a traceback, and the server stays up ------------------------
@pytest.fixture(scope="module")
def damaged_server(model, tmp_path_factory):
    """The model with output_norm.weight all NaN: every logit is NaN."""
    root = tmp_path_factory.mktemp("damaged")
    path = root / "damaged.gguf"
    path.write_bytes(model.read_bytes())
    with GGUFFile(path) as g:
        entry = next(e for e in g.tensors if e.info.name == "output_norm.weight")
    with open(path, "r+b") as f:
        f.seek(entry.offset)
        f.write(np.full(entry.info.nbytes // 4, np.nan, np.float32).tobytes())
    srv = _serve(path, root / "stderr.txt", "-c", 256)
    yield srv
    _stop(srv)


def test_damaged_model(damaged_server, openapi):
    srv = damaged_server
    message = "damaged.gguf: the model computed 512 NaN or infinite logit(s) (of 512): the model file is damaged"
    with srv.client(None) as c:
        r = c.post("/completion", json={"prompt": PROMPT, "n_predict": 4})
        assert r.status_code == 500 and "500" in openapi["paths"]["/completion"]["post"]["responses"]
        err = r.json()["error"]
        assert err["code"] == "model_damaged" and err["type"] == "server_error" and err["message"].startswith(message)
        with c.stream("POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                            "stream": True}) as s:
            events = sse_events(s.iter_lines())  # headers went out before the first token: the error is an event
        assert json.loads(events[-1])["error"]["code"] == "model_damaged", events
    assert srv.health()["slots_processing"] == 0
    _log_line(srv, '"POST /completion" 500')
    _log_line(srv, '"POST /v1/chat/completions" 200', "failed while streaming: model_damaged")
    assert srv.log().count("model damaged: " + message) == 2


def test_access_log_shows_the_500_of_a_bug():
    """An exception that escapes the app is answered 500 by Starlette's outermost middleware: logged as 500, not -."""
    import logging
    from server.app import AccessLogMiddleware

    async def broken(scope, receive, send):
        raise RuntimeError("a bug")

    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log = logging.getLogger("toolkit.server")
    log.addHandler(handler)
    level, log.level = log.level, logging.INFO
    try:
        with pytest.raises(RuntimeError):
            asyncio.run(AccessLogMiddleware(broken)({"type": "http", "method": "POST", "path": "/completion",
                                                     "client": ("10.0.0.1", 5)}, None, None))
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert len(lines) == 1 and lines[0].startswith('10.0.0.1:5 "POST /completion" 500 '), lines


# -- load, queue, disconnects -----------------------------------------------------------------------------------------
async def _stream_completion(client: httpx.AsyncClient, body: dict):
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            return r.status_code, json.loads(await r.aread())
        events = sse_events([line async for line in r.aiter_lines()])
        done = events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events if e != "[DONE]")
        return 200, (text, done)


def test_load_40_concurrent_streams(server, expected):
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": LONG, "temperature": 0}
    health = []

    async def main():
        finished = asyncio.Event()

        async def poll():
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as h:
                while not finished.is_set():
                    t = time.perf_counter()
                    r = await h.get("/health")
                    health.append((r.status_code, time.perf_counter() - t, r.json()))
                    await asyncio.sleep(0.02)

        poller = asyncio.create_task(poll())
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                                     limits=httpx.Limits(max_connections=50)) as c:
            results = await asyncio.gather(*(_stream_completion(c, body) for _ in range(40)))
        finished.set()
        await poller
        return results

    results = asyncio.run(main())
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    ok = [v for s, v in results if s == 200]
    busy = [v for s, v in results if s == 503]
    assert all(v == (expected["long"], True) for v in ok)  # each slot its own context: no cross-talk
    assert len(ok) >= 5 and busy, statuses  # 2 slots + a queue of 3 admitted at once; the rest refused
    assert all(b["error"]["code"] == "queue_full" and "busy" in b["error"]["message"] for b in busy)
    assert health and all(s == 200 and dt < 2.0 for s, dt, _ in health), health
    assert max(h["slots_processing"] for _, _, h in health) == 2
    assert max(h["requests_waiting"] for _, _, h in health) <= 3
    time.sleep(0.2)
    assert server.health()["slots_processing"] == 0


def _wait_for(server, pred, timeout=5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = server.health()
        if pred(h) or time.monotonic() > deadline:
            return h
        time.sleep(0.01)


def test_disconnect_frees_the_slot(server, expected):
    """Two endless streams fill both slots; a third request waits (two more join the queue and give up). Cutting one
    stream off lets the third run (and finish) while the other stream still generates; cutting the other one off
    idles the server at once, although generating the rest of its context would take seconds."""
    endless = {"prompt": PROMPT, "n_predict": -1, "ignore_eos": True, "temperature": 0, "stream": True}
    a_client, b_client = server.client(), server.client()
    a = a_client.send(a_client.build_request("POST", "/completion", json=endless), stream=True)
    b = b_client.send(b_client.build_request("POST", "/completion", json=endless), stream=True)
    a_lines, b_lines = (x for x in a.iter_lines() if x), (x for x in b.iter_lines() if x)
    assert next(a_lines).startswith("data: ") and next(b_lines).startswith("data: ")
    assert server.health()["slots_processing"] == 2
    with concurrent.futures.ThreadPoolExecutor(1) as pool, server.client() as c:
        third = pool.submit(c.post, "/v1/completions", json={"model": NAME, "prompt": PROMPT, "max_tokens": 48,
                                                             "temperature": 0})
        assert _wait_for(server, lambda h: h["requests_waiting"] == 1)["requests_waiting"] == 1
        # clients that give up while queued leave the queue: one streamed (its 200 and headers come at once), one not
        d_client = server.client()
        d = d_client.send(d_client.build_request("POST", "/completion", json={**endless, "n_predict": 8}), stream=True)
        assert d.status_code == 200 and _wait_for(server, lambda h: h["requests_waiting"] == 2)["requests_waiting"] == 2
        with pytest.raises(httpx.ReadTimeout):
            c.post("/completion", json={"prompt": PROMPT, "n_predict": 8}, timeout=0.5)
        assert _wait_for(server, lambda h: h["requests_waiting"] == 2)["requests_waiting"] == 2
        d.close()
        d_client.close()
        assert _wait_for(server, lambda h: h["requests_waiting"] == 1)["requests_waiting"] == 1
        assert not third.done()  # no slot for it while both streams run
        a.close()
        a_client.close()
        r = third.result(timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected["greedy48"]
    assert next(b_lines).startswith("data: ")  # the other stream still runs
    assert server.health()["slots_processing"] == 1
    b.close()
    b_client.close()
    t = time.monotonic()
    h = _wait_for(server, lambda h: h["slots_processing"] == 0, timeout=1.0)
    assert h == {"status": "ok", "slots_idle": 2, "slots_processing": 0, "requests_waiting": 0}, h
    assert time.monotonic() - t < 1.0
    _log_line(server, '"POST /completion" 200', "cancelled")


def test_non_streamed_client_gone(server):
    """A non-streamed request whose client gives up stops generating too."""
    with server.client() as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/completion", json={"prompt": PROMPT, "n_predict": -1, "ignore_eos": True, "temperature": 0},
                   timeout=0.5)
    h = _wait_for(server, lambda h: h["slots_processing"] == 0, timeout=1.5)
    assert h["slots_processing"] == 0


def _log_line(server, *parts, timeout=5.0) -> str:
    """The access-log line with every part (written once the response has ended, so perhaps just after)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [x for x in server.log().splitlines() if all(p in x for p in parts)]
        if lines or time.monotonic() > deadline:
            assert lines, (parts, server.log())
            return lines[-1]
        time.sleep(0.02)


def test_startup_and_access_log(server):
    first = server.log().splitlines()[0]
    for part in (f"listening on {server.url}", "stories260K-f32.gguf", f"context {N_CTX}", "1 threads", "2 slot(s)"):
        assert part in first, first
    with server.client() as c:
        assert c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 17, "temperature": 0}).status_code == 200
        assert c.post("/completion", json={"prompt": 3}).status_code == 400
    with server.client(None) as c:
        assert c.get("/v1/models").status_code == 401
    line = _log_line(server, '"POST /v1/completions" 200', "generated 17 tok")
    assert "prompt 5 tok" in line and "tok/s" in line
    _log_line(server, '"GET /v1/models" 401')
    _log_line(server, '"POST /completion" 400')


# -- the command line -------------------------------------------------------------------------------------------------
def test_cli_errors(model, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases = [(["-m", tmp_path / "missing.gguf"], "does not exist"),
                 (["-m", model, "--port", busy.getsockname()[1]], "cannot listen on 127.0.0.1"),
                 (["-m", model, "--parallel", "0"], "--parallel must be at least 1"),
                 (["-m", model, "--cache-type", "q8"], "unknown KV cache type 'q8' (-ctk/-ctv)"),
                 (["-m", model, "--chat-template", "nonsense", "--port", "0"], "unknown chat template")]
        procs = [subprocess.Popen([*TOOLKIT, "serve", *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=REPO) for args, _ in cases]
        for p, (_, text) in zip(procs, cases):
            _, err = p.communicate(timeout=60)
            assert p.returncode == 1 and text in err and "Traceback" not in err, err


def test_chat_template_file(tmp_path):
    from server.main import chat_template_arg
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert chat_template_arg(str(f)) == f.read_text()
    assert chat_template_arg("chatml") == "chatml"


def test_serve_does_not_import_torch():
    code = ("import sys, toolkit.cli, server.app, server.main, server.engine\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not bad, bad\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
