"""Issue 13's observability on `toolkit serve` (stories260K, as in test_server): /metrics read with prometheus_client's
own parser, whose counters grow by the tokens the answers report (their `timings`, `usage` and token counts);
/slots and /props in llama-server's shapes; the endpoints off answering llama-server's 501; the access log's
timings. Metrics' rates and windows in-process."""
from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.ggufio import GGUFFile
from server.metrics import Gauges, Metrics
from tests.test_server import PROMPT, _serve, _stop

KEY = "sk-metrics"


@pytest.fixture(scope="module")
def model(stories260k_f32):
    return stories260k_f32


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    srv = _serve(model, tmp_path_factory.mktemp("metrics") / "stderr.txt", "-c", 512, "--parallel", 2, "--metrics",
                 "--api-key", KEY)
    yield srv
    _stop(srv)


def scrape(srv) -> dict[str, float]:
    """Every sample of /metrics by name, as prometheus_client parses the text (its families' types checked; it names
    a counter's sample NAME_total, so llama-server's counter llamacpp:n_tokens_max is llamacpp:n_tokens_max_total)."""
    with srv.client(KEY) as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.text
    samples = {}
    for family in text_string_to_metric_families(r.text):
        assert family.type in ("counter", "gauge"), family
        for s in family.samples:
            samples[s.name] = s.value
    return samples


def test_metrics_grow_by_the_tokens_served(server):
    before = scrape(server)
    for name in ("prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total", "tokens_predicted_total",
                 "tokens_predicted_seconds_total", "n_tokens_max_total", "prompt_tokens_seconds", "predicted_tokens_seconds",
                 "requests_processing", "requests_deferred", "kv_cache_usage_ratio", "kv_cache_tokens"):
        assert "llamacpp:" + name in before, (name, sorted(before))
    served = []  # (prompt tokens, of which evaluated, generated, prompt seconds, generation seconds, longest sequence)
    with server.client(KEY) as c:
        a = c.post("/completion", json={"prompt": PROMPT, "n_predict": 16, "temperature": 0}).json()
        served.append((a["tokens_evaluated"], a["timings"], a["tokens_predicted"]))
        with c.stream("POST", "/completion", json={"prompt": PROMPT + " there", "n_predict": 9, "stream": True,
                                                   "temperature": 0}) as s:
            last = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: ")][-1]
        served.append((last["tokens_evaluated"], last["timings"], last["tokens_predicted"]))
        b = c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 7, "n": 2, "seed": 3}).json()
        served.append((b["usage"]["prompt_tokens"], b["timings"], b["usage"]["completion_tokens"]))
    assert served[0][0] == 5 and served[2][2] == 14  # BOS + 4 (test_server's test_tokenize)
    after = scrape(server)

    def grew(name):
        return after["llamacpp:" + name] - before["llamacpp:" + name]
    assert grew("prompt_tokens_total") == sum(t["prompt_n"] for _, t, _ in served)
    assert grew("prompt_tokens_cached_total") == sum(n - t["prompt_n"] for n, t, _ in served)
    assert grew("tokens_predicted_total") == 16 + 9 + 14
    assert grew("prompt_seconds_total") == pytest.approx(sum(t["prompt_ms"] for _, t, _ in served) / 1000, rel=1e-6)
    assert grew("tokens_predicted_seconds_total") > 0
    assert after["llamacpp:n_tokens_max_total"] >= max(n + g for n, _, g in served[:2])
    assert after["llamacpp:requests_processing"] == 0 and after["llamacpp:requests_deferred"] == 0
    # the rates cover the time since the previous scrape: these requests, then nothing
    assert after["llamacpp:prompt_tokens_seconds"] > 0 and after["llamacpp:predicted_tokens_seconds"] > 0
    again = scrape(server)
    assert again["llamacpp:prompt_tokens_seconds"] == 0 and again["llamacpp:predicted_tokens_seconds"] == 0
    assert again["llamacpp:prompt_tokens_total"] == after["llamacpp:prompt_tokens_total"]
    # the KV caches hold each slot's last context: /slots' n_prompt_tokens, out of 2 x 512
    with server.client(KEY) as c:
        slots = c.get("/slots").json()
    assert again["llamacpp:kv_cache_tokens"] == sum(s.get("n_prompt_tokens", 0) for s in slots) > 0
    assert again["llamacpp:kv_cache_usage_ratio"] == pytest.approx(again["llamacpp:kv_cache_tokens"] / 1024)
    # the batcher's passes: one client at a time, so one sequence per pass, and at least a pass per token generated
    assert grew("n_decode_total") >= 16 + 9 + 14 and after["llamacpp:n_busy_slots_per_decode"] == 1


def test_slots_while_generating_and_after(server):
    """llama-server's /slots: each slot's id, n_ctx, is_processing, and its current or last task with its params and
    next_token; requests_processing counts the generating one."""
    body = {"prompt": PROMPT, "n_predict": 500, "temperature": 0, "ignore_eos": True, "stream": True,
            "cache_prompt": False}
    with server.client(KEY) as c, server.client(KEY) as watch, c.stream("POST", "/completion", json=body) as s:
        lines = s.iter_lines()
        assert next(lines).startswith("data: ")   # generating: 500 tokens take a while longer
        busy = [x for x in watch.get("/slots").json() if x["is_processing"]]
        processing = scrape(server)["llamacpp:requests_processing"]
        for _ in lines:
            pass
    assert len(busy) == 1 and processing == 1, (busy, processing)
    live = busy[0]
    assert live["params"]["n_predict"] == 500 and live["params"]["temperature"] == 0
    assert live["params"]["ignore_eos"] is True and live["next_token"][0]["has_next_token"] is True
    assert 0 < live["next_token"][0]["n_decoded"] < 500
    with server.client(KEY) as c:
        slots = c.get("/slots").json()
        assert c.get("/slots", params={"fail_on_no_slot": 1}).status_code == 200   # idle slots
    assert [x["id"] for x in slots] == [0, 1] and all(x["n_ctx"] == 512 and not x["is_processing"] for x in slots)
    last = slots[live["id"]]
    assert last["id_task"] == live["id_task"]
    assert last["n_prompt_tokens_processed"] == 5 and last["n_prompt_tokens_cache"] == 0
    assert last["next_token"] == [{"has_next_token": False, "has_new_line": last["next_token"][0]["has_new_line"],
                                   "n_remain": 0, "n_decoded": 500}]
    # the tokens in the slot's KV cache: the prompt and the tokens generated (the last one sampled may not be evaluated)
    assert last["n_prompt_tokens"] in (5 + 500 - 1, 5 + 500)


def test_props(server, model):
    with server.client(KEY) as c:
        props = c.get("/props").json()
    with GGUFFile(model) as g:
        tokens = g.value("tokenizer.ggml.tokens")
        bos, eos = tokens[g.value("tokenizer.ggml.bos_token_id")], tokens[g.value("tokenizer.ggml.eos_token_id")]
    assert props["total_slots"] == 2 and props["model_path"] == str(model)
    assert props["default_generation_settings"]["n_ctx"] == 512
    assert props["default_generation_settings"]["params"]["temperature"] == 0.8  # toolkit run's default, as llama.cpp
    assert props["endpoint_metrics"] is True and props["endpoint_slots"] is True and props["endpoint_props"] is False
    assert (props["bos_token"], props["eos_token"]) == (bos, eos)
    assert props["modalities"] == {"vision": False, "video": False, "audio": False}


def test_endpoints_need_the_key(server):
    with server.client(None) as c:
        assert [c.get(p).status_code for p in ("/metrics", "/slots", "/props")] == [401, 401, 401]


def test_access_log_has_the_timings(server):
    from tests.test_server import _log_line
    with server.client(KEY) as c:
        c.post("/completion", json={"prompt": PROMPT, "n_predict": 6, "cache_prompt": False})
    line = _log_line(server, '"POST /completion" 200', "generated 6 tok")
    assert "prompt 5 tok, 0 cached" in line and " ms (" in line and "tok/s)" in line, line


@pytest.fixture(scope="module")
def quiet_server(model, tmp_path_factory):
    """llama-server's defaults: no --metrics; and --no-slots."""
    srv = _serve(model, tmp_path_factory.mktemp("quiet") / "stderr.txt", "--no-slots")
    yield srv
    _stop(srv)


def test_endpoints_off_answer_501(quiet_server):
    for path, flag in (("/metrics", "--metrics"), ("/slots", "--slots")):
        r = httpx.get(quiet_server.url + path, timeout=10)
        assert r.status_code == 501, r.text
        assert r.json()["error"]["type"] == "not_supported_error" and flag in r.json()["error"]["message"]
    props = httpx.get(quiet_server.url + "/props", timeout=10).json()
    assert props["endpoint_metrics"] is False and props["endpoint_slots"] is False
    paths = httpx.get(quiet_server.url + "/openapi.json", timeout=10).json()["paths"]
    assert "/props" in paths and "/metrics" not in paths and "/slots" not in paths


def test_metrics_rates_and_windows():
    """In-process: llama-server's bucket rates (decode steps over time: a request's first token is free), the
    windows reset by each rendering, the counters not; the decode counters as the gauges give them."""
    m = Metrics()
    gauges = Gauges(requests_processing=1, requests_deferred=2, kv_cache_tokens=30, kv_cache_capacity=120)

    def render():
        return {s.name: s.value for f in text_string_to_metric_families(m.render(gauges)) for s in f.samples}
    m.on_prompt(10, 0.5)
    m.on_prompt_cached(4)
    m.on_generated(11, 2.0)
    m.on_sequence(25)
    first = render()
    assert first["llamacpp:prompt_tokens_seconds"] == 20 and first["llamacpp:predicted_tokens_seconds"] == 5
    assert first["llamacpp:prompt_tokens_total"] == 10 and first["llamacpp:prompt_tokens_cached_total"] == 4
    assert first["llamacpp:tokens_predicted_total"] == 11 and first["llamacpp:n_tokens_max_total"] == 25
    assert first["llamacpp:requests_deferred"] == 2 and first["llamacpp:kv_cache_usage_ratio"] == 0.25
    assert first["llamacpp:n_decode_total"] == 0
    gauges.n_decode, gauges.n_decode_sequences = 2, 3
    second = render()
    assert second["llamacpp:prompt_tokens_seconds"] == 0 and second["llamacpp:tokens_predicted_total"] == 11
    assert second["llamacpp:n_decode_total"] == 2 and second["llamacpp:n_busy_slots_per_decode"] == 1.5
