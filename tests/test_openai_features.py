"""Issue 14, what `openai`-client programs send: constrained sampling (GBNF grammars, JSON schemas, response_format),
log-probabilities, presence/frequency penalties and logit_bias — on `toolkit serve` (through the official `openai`
client and httpx), `toolkit run` and the Python API.

Oracles: jsonschema_rs validates JSON outputs and runtime.grammar's own recognizer (checked against llama.cpp's in
test_grammar) the GBNF ones; log-probabilities are checked against log_softmax of the logits of our Session computed
in the test and of llama.cpp's (llama-cpp-python, logits_all=True) on the same file; penalties against a direct numpy
transcription of llama.cpp's penalties sampler (src/llama-sampler.cpp, llama_sampler_penalties_apply)."""
from __future__ import annotations

import collections
import json

import jsonschema_rs
import numpy as np
import openai
import pytest

from runtime.api import Llama
from runtime.generate import Session
from runtime.grammar import Grammar
from runtime.sampling import Sampler, SamplingParams, apply_penalties
from tests.helpers import run_toolkit
from tests.test_server import KEY, _serve, _stop

NAME = "stories"
PROMPT = "Once upon a time"
N_CTX = 1024

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {"mood": {"enum": ["happy", "sad", "angry"]}, "ok": {"type": "boolean"},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                               "minItems": 1, "maxItems": 3}},
     "required": ["mood", "ok", "tags"]},
    {"$defs": {"pt": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                      "required": ["x", "y"]}},
     "type": "object", "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}},
     "required": ["a", "b"]},
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4},
]
GBNF = 'root ::= answer " " word\nanswer ::= "yes" | "no" | "maybe"\nword ::= [a-z]{2,8}'


@pytest.fixture(scope="module")
def model(stories260k_f32):
    return stories260k_f32


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    srv = _serve(model, tmp_path_factory.mktemp("features-log") / "stderr.txt", "-c", N_CTX, "--api-key", KEY,
                 "--alias", NAME)
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def api(model):
    llm = Llama(str(model), n_ctx=N_CTX, verbose=False)
    yield llm
    llm.close()


def log_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


# -- constrained sampling --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schema", SCHEMAS, ids=["person", "enum-array", "ref", "int-array"])
def test_chat_json_schema_outputs_validate(oai, schema):
    validator = jsonschema_rs.validator_for(schema)
    for seed in range(3):
        r = oai.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "Describe a cat"}], seed=seed, max_tokens=400,
            response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}})
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice.message.content  # ended by the grammar, not the limit
        validator.validate(json.loads(choice.message.content))


def test_chat_json_object(oai):
    for seed in range(3):
        r = oai.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], seed=seed,
                                        max_tokens=300, temperature=0.3, response_format={"type": "json_object"})
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(r.choices[0].message.content), dict)
        else:  # cut by max_tokens: still a prefix the grammar accepts
            assert r.choices[0].message.content.lstrip().startswith("{")


def test_streamed_json_schema_equals_whole(oai):
    kw = dict(model=NAME, messages=[{"role": "user", "content": "Tell me"}], seed=5, max_tokens=300,
              response_format={"type": "json_schema", "json_schema": {"name": "o", "schema": SCHEMAS[1]}})
    whole = oai.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(stream=True, **kw))
    assert streamed == whole
    jsonschema_rs.validate(SCHEMAS[1], json.loads(whole))


def test_text_completion_response_format(oai):
    r = oai.completions.create(model=NAME, prompt=PROMPT, seed=1, max_tokens=300, extra_body={
        "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMAS[0]}}})
    jsonschema_rs.validate(SCHEMAS[0], json.loads(r.choices[0].text))


def test_llama_completion_grammar_and_json_schema(server):
    g = Grammar.parse(GBNF)
    with server.client() as c:
        texts = set()
        for seed in range(6):
            body = c.post("/completion", json={"prompt": PROMPT, "grammar": GBNF, "seed": seed, "n_predict": 50}).json()
            assert body["stop_type"] == "eos" and g.accepts(body["content"]), body["content"]
            texts.add(body["content"])
        assert len(texts) > 1  # sampled, not one forced string
        body = c.post("/completion", json={"prompt": PROMPT, "json_schema": SCHEMAS[3], "seed": 2,
                                           "n_predict": 200}).json()
        jsonschema_rs.validate(SCHEMAS[3], json.loads(body["content"]))


@pytest.mark.parametrize("route, body, words", [
    ("/completion", {"prompt": "x", "grammar": 'root ::= "a'}, "line 1"),
    ("/completion", {"prompt": "x", "grammar": "root ::= undefined-rule"}, "undefined-rule"),
    ("/completion", {"prompt": "x", "json_schema": {"type": "integer", "minimum": 3}}, "minimum"),
    ("/completion", {"prompt": "x", "grammar": "root ::= \"a\"", "json_schema": {"type": "integer"}}, "one of"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema", "json_schema": {"schema": {"not": {}}}}},
     "not"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
     "xml"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema"}}, "schema"),
])
def test_bad_grammars_and_schemas_are_400(server, route, body, words):
    with server.client() as c:
        r = c.post(route, json=body)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_openai_client_sees_bad_schema_as_bad_request(oai):
    with pytest.raises(openai.BadRequestError, match="multipleOf"):
        oai.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}], response_format={
            "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer", "multipleOf": 2}}})


def test_api_response_format_equals_server(oai, api):
    messages = [{"role": "user", "content": "Describe a dog"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": SCHEMAS[0]}}
    ours = api.create_chat_completion(messages, seed=11, max_tokens=300, response_format=fmt)
    served = oai.chat.completions.create(model=NAME, messages=messages, seed=11, max_tokens=300, response_format=fmt)
    assert ours["choices"][0]["message"]["content"] == served.choices[0].message.content
    jsonschema_rs.validate(SCHEMAS[0], json.loads(ours["choices"][0]["message"]["content"]))


def test_api_grammar_text_and_object(api):
    g = Grammar.parse(GBNF)
    for grammar in (GBNF, g):
        r = api.create_completion(PROMPT, max_tokens=50, seed=4, grammar=grammar)
        assert g.accepts(r["choices"][0]["text"]) and r["choices"][0]["finish_reason"] == "stop"


def test_run_grammar_flags(model, tmp_path):
    g = Grammar.parse(GBNF)
    out = run_toolkit("run", "-m", model, "-p", PROMPT, "-n", 60, "-s", 3, "--grammar", GBNF, "--no-escape")
    assert out.returncode == 0, out.stderr
    assert g.accepts(out.stdout[len(PROMPT):-1]), out.stdout
    path = tmp_path / "g.gbnf"
    path.write_text(GBNF)
    same = run_toolkit("run", "-m", model, "-p", PROMPT, "-n", 60, "-s", 3, "--grammar-file", path, "--no-escape")
    assert same.stdout == out.stdout
    j = run_toolkit("run", "-m", model, "-p", PROMPT, "-n", 300, "-s", 3, "-j", json.dumps(SCHEMAS[1]))
    assert j.returncode == 0, j.stderr
    jsonschema_rs.validate(SCHEMAS[1], json.loads(j.stdout[len(PROMPT):]))


@pytest.mark.parametrize("args, words", [
    (["--grammar", 'root ::= "a'], "unterminated"),
    (["--grammar-file", "/nonexistent/g.gbnf"], "cannot read"),
    (["-j", "{not json"], "not JSON"),
    (["-j", '{"type": "string", "format": "email", "uniqueItems": true}'], "uniqueItems"),
    (["--grammar", 'root ::= "a"', "-j", "{}"], "one of"),
])
def test_run_bad_grammar_is_one_line(model, args, words):
    out = run_toolkit("run", "-m", model, "-p", PROMPT, "-n", 5, *args)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and words in out.stderr, out.stderr


# -- log-probabilities -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probed(server, model):
    """A seeded sampled /completion with n_probs, and the same tokens' logits from our Session and llama.cpp."""
    with server.client() as c:
        prompt = c.post("/tokenize", json={"content": PROMPT, "add_special": True}).json()["tokens"]
        body = c.post("/completion", json={"prompt": prompt, "n_predict": 24, "seed": 9, "n_probs": 5,
                                           "temperature": 1.0}).json()
    generated = [p["id"] for p in body["completion_probabilities"]]
    assert len(generated) == body["tokens_predicted"] == 24
    session = Session(model, n_ctx=256)  # f16 KV cache, as the server's
    ours = [session.eval(prompt)] + [session.eval([t]) for t in generated[:-1]]
    session.close()
    return prompt, body, generated, np.array(ours)


def test_n_probs_are_log_softmax_of_our_logits(probed):
    _, body, generated, logits = probed
    for entry, row in zip(body["completion_probabilities"], logits):
        lp = log_softmax(row)
        assert entry["logprob"] == pytest.approx(lp[entry["id"]], abs=1e-6)
        top = [t["id"] for t in entry["top_logprobs"]]
        assert top == list(np.argsort(-lp, kind="stable")[:5])
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(lp[top], abs=1e-6)
        assert bytes(entry["bytes"]).decode("utf-8", "replace").endswith(entry["token"])


def test_logprobs_equal_llama_cpp(probed, model):
    """Our logprobs path (runtime.logprobs over the Session's logits, F32 KV cache) against log_softmax of
    llama.cpp's logits for the same tokens (llama-cpp-python, logits_all, F32 KV cache, one token per batch)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from runtime.logprobs import token_logprob
    prompt, body, generated, _ = probed
    session = Session(model, n_ctx=256, cache_type="f32", n_batch=1)
    ours = [session.eval(prompt)] + [session.eval([t]) for t in generated[:-1]]
    session.close()
    ref = llama_cpp.Llama(str(model), n_ctx=256, n_batch=1, n_ubatch=1, logits_all=True, verbose=False,
                          n_threads=2, type_k=0, type_v=0)
    ref.eval(prompt + generated[:-1])
    scores = np.array(ref.scores[len(prompt) - 1:len(prompt) + len(generated) - 1])
    for token, row, theirs in zip(generated, ours, scores):
        entry = token_logprob(token, row, 5)
        lp = log_softmax(theirs)
        assert entry.logprob == pytest.approx(float(lp[token]), abs=1e-3)
        assert [v for _, v in entry.top] == pytest.approx(np.sort(lp)[::-1][:5], abs=1e-3)


def test_chat_logprobs_openai_shape(oai, api):
    messages = [{"role": "user", "content": "Say something"}]
    r = oai.chat.completions.create(model=NAME, messages=messages, max_tokens=12, seed=3, logprobs=True,
                                    top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens or r.choices[0].finish_reason == "stop"
    assert "".join(c.token for c in content) == r.choices[0].message.content
    for c in content:
        assert len(c.top_logprobs) == 3 and c.logprob <= 0
        assert [t.logprob for t in c.top_logprobs] == sorted((t.logprob for t in c.top_logprobs), reverse=True)
        assert c.logprob <= c.top_logprobs[0].logprob + 1e-12
        assert bytes(c.bytes).decode() == c.token
    streamed = [x for ch in oai.chat.completions.create(model=NAME, messages=messages, max_tokens=12, seed=3,
                                                         logprobs=True, top_logprobs=3, stream=True)
                if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.content]
    assert [(x.token, x.logprob) for x in streamed] == [(x.token, x.logprob) for x in content]
    local = api.create_chat_completion(messages, max_tokens=12, seed=3, logprobs=True, top_logprobs=3)
    assert [(x["token"], x["logprob"]) for x in local["choices"][0]["logprobs"]["content"]] == \
        [(x.token, x.logprob) for x in content]
    plain = oai.chat.completions.create(model=NAME, messages=messages, max_tokens=4, seed=3)
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        oai.chat.completions.create(model=NAME, messages=messages, max_tokens=4, top_logprobs=2)


def test_completion_logprobs_legacy_shape(oai, server, api):
    r = oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=10, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 10
    assert lp.text_offset[0] == len(PROMPT)
    assert all(b - a == len(t) for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens))
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[token] == value and max(top.values()) == value  # greedy: the chosen token is the most likely
    with server.client() as c:
        native = c.post("/completion", json={"prompt": PROMPT, "n_predict": 10, "temperature": 0,
                                             "n_probs": 2}).json()["completion_probabilities"]
    assert lp.token_logprobs == pytest.approx([e["logprob"] for e in native], abs=1e-12)
    local = api.create_completion(PROMPT, max_tokens=10, temperature=0, logprobs=2)["choices"][0]["logprobs"]
    assert local["token_logprobs"] == lp.token_logprobs and local["tokens"] == lp.tokens


def test_logprobs_are_before_sampling_filters(server):
    """A grammar, a bias and top-k change what is sampled, not the model's distribution the logprobs report."""
    with server.client() as c:
        free = c.post("/completion", json={"prompt": PROMPT, "n_predict": 1, "temperature": 0,
                                           "n_probs": 3}).json()["completion_probabilities"][0]
        forced = c.post("/completion", json={"prompt": PROMPT, "n_predict": 1, "temperature": 0, "n_probs": 3,
                                             "logit_bias": [[free["id"], False]], "top_k": 2,
                                             "grammar": "root ::= [ a-z]+"}).json()["completion_probabilities"][0]
    assert forced["id"] != free["id"]
    assert forced["top_logprobs"] == free["top_logprobs"]


# -- penalties and logit_bias ------------------------------------------------------------------------------------------
def reference_penalties(logits, history, last_n, repeat, freq, present) -> np.ndarray:
    """llama.cpp's llama_sampler_penalties_apply, transcribed: counts over the last `last_n` tokens; each counted
    token's logit divided by `repeat` (multiplied when <= 0), then lowered by count * freq + present."""
    out = np.array(logits, dtype=np.float64)
    if last_n == 0 or (repeat == 1.0 and freq == 0.0 and present == 0.0):
        return out
    window = history[-last_n:] if last_n > 0 else history
    for token, count in collections.Counter(window).items():
        out[token] = out[token] * repeat if out[token] <= 0 else out[token] / repeat
        out[token] -= count * freq + present
    return out


@pytest.mark.parametrize("last_n, repeat, freq, present", [
    (64, 1.0, 0.5, 0.0), (64, 1.0, 0.0, 1.5), (8, 1.3, 0.7, -0.4), (-1, 0.8, -1.0, 2.0), (0, 1.3, 1.0, 1.0),
    (3, 1.0, 2.0, 2.0)])
def test_penalties_follow_llama_cpp(last_n, repeat, freq, present):
    rng = np.random.default_rng(last_n + 100)
    logits = rng.normal(size=50) * 3
    history = list(rng.integers(0, 50, size=40))
    p = SamplingParams(repeat_penalty=repeat, repeat_last_n=last_n, frequency_penalty=freq,
                       presence_penalty=present)
    got = logits.copy()
    if p.penalizes:
        apply_penalties(got, history, p)
    np.testing.assert_allclose(got, reference_penalties(logits, history, last_n, repeat, freq, present), rtol=1e-12)
    greedy = Sampler(SamplingParams(temp=0, repeat_penalty=repeat, repeat_last_n=last_n, frequency_penalty=freq,
                                    presence_penalty=present)).sample(logits, history)
    assert greedy == int(np.argmax(reference_penalties(logits, history, last_n, repeat, freq, present)))


def test_penalized_generation_follows_the_reference(model, api):
    """Greedy generation with penalties over the context equals argmax of the reference-penalized logits of our
    model at every step (the history: prompt and generated tokens, as `toolkit run` keeps it)."""
    kw = dict(repeat_penalty=1.1, frequency_penalty=0.6, presence_penalty=0.4)
    text = api.create_completion(PROMPT, max_tokens=30, temperature=0, **kw)["choices"][0]["text"]
    plain = api.create_completion(PROMPT, max_tokens=30, temperature=0)["choices"][0]["text"]
    assert text != plain
    session = Session(model, n_ctx=256)
    tokens = session.tokenizer.encode(PROMPT, add_bos=True)
    logits = session.eval(tokens)
    for _ in range(30):
        token = int(np.argmax(reference_penalties(logits, tokens, 64, kw["repeat_penalty"],
                                                  kw["frequency_penalty"], kw["presence_penalty"])))
        if token in session.tokenizer.eog_ids:
            break
        tokens.append(token)
        logits = session.eval([token])
    expected = session.tokenizer.decode(tokens[len(session.tokenizer.encode(PROMPT, add_bos=True)):])
    session.close()
    assert text == expected.lstrip(" ") or text == expected


def test_logit_bias_forms(oai, server):
    with server.client() as c:
        top = c.post("/completion", json={"prompt": PROMPT, "n_predict": 1, "temperature": 0,
                                          "n_probs": 3}).json()["completion_probabilities"][0]["top_logprobs"]
        best, second, third = top
        banned = oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=1, temperature=0,
                                        logit_bias={str(best["id"]): -100})
        assert banned.choices[0].text.strip() == second["token"].strip()
        boosted = oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=1, temperature=0,
                                         logit_bias={str(third["id"]): 100})
        assert boosted.choices[0].text.strip() == third["token"].strip()
        r = c.post("/completion", json={"prompt": PROMPT, "n_predict": 1, "temperature": 0,
                                        "logit_bias": [[best["id"], False], [second["id"], -1e-9]]}).json()
        assert r["content"].strip() == second["token"].strip()  # a tiny bias moves nothing
        # text form (llama-server): every token of the text, here the best one and the space piece before it
        text_ids = c.post("/tokenize", json={"content": best["token"]}).json()["tokens"]
        assert best["id"] in text_ids
        r = c.post("/completion", json={"prompt": PROMPT, "n_predict": 1, "temperature": 0,
                                        "logit_bias": {best["token"]: False}}).json()
        assert r["content"].strip() not in (best["token"].strip(), "")
        for bad in ({"5": 101}, {"999999": 1}, [[1, 2, 3]], {"1": True}):
            r = c.post("/completion", json={"prompt": PROMPT, "n_predict": 1, "logit_bias": bad})
            assert r.status_code == 400, (bad, r.text)


@pytest.mark.parametrize("field, value", [("presence_penalty", 2.5), ("frequency_penalty", -3),
                                          ("presence_penalty", "NaN")])
def test_penalty_ranges_are_400(server, field, value):
    with server.client() as c:
        r = c.post("/v1/completions", content=f'{{"prompt": "x", "{field}": {value}}}',
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and field in r.json()["error"]["message"]


def test_server_penalties_equal_api(oai, api):
    kw = dict(max_tokens=30, temperature=0, presence_penalty=1.0, frequency_penalty=0.5)
    served = oai.completions.create(model=NAME, prompt=PROMPT, **kw).choices[0].text
    assert served == api.create_completion(PROMPT, **kw)["choices"][0]["text"]
    assert served != api.create_completion(PROMPT, max_tokens=30, temperature=0)["choices"][0]["text"]


def test_run_penalty_and_bias_flags(model, api):
    out = run_toolkit("run", "-m", model, "-p", PROMPT, "-n", 30, "--temp", 0, "--presence-penalty", 1.0,
                      "--frequency-penalty", 0.5)
    assert out.returncode == 0, out.stderr
    expected = api.create_completion(PROMPT, max_tokens=30, temperature=0, presence_penalty=1.0,
                                     frequency_penalty=0.5)["choices"][0]["text"]
    assert out.stdout[len(PROMPT):-1] == expected  # the generation keeps its first token's leading space
    api.reset()
    api.eval(api.tokenize(PROMPT.encode()))
    order = np.argsort(-api.scores[-1])
    pieces = [api.detokenize([int(t)]).decode() for t in order[:2]]
    assert pieces[0] != pieces[1]
    plain = run_toolkit("run", "-m", model, "-p", PROMPT, "-n", 1, "--temp", 0)
    banned = run_toolkit("run", "-m", model, "-p", PROMPT, "-n", 1, "--temp", 0, "--logit-bias", f"{order[0]}-inf")
    assert plain.stdout[len(PROMPT):].startswith(pieces[0])
    assert banned.returncode == 0 and banned.stdout[len(PROMPT):].startswith(pieces[1]), banned.stdout
    for args, words in ((["--presence-penalty", 3], "--presence-penalty"), (["--logit-bias", "12*3"], "--logit-bias"),
                        (["--logit-bias", "12+101"], "--logit-bias")):
        bad = run_toolkit("run", "-m", model, "-p", PROMPT, "-n", 1, *args)
        assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and words in bad.stderr


# -- n > 1 -------------------------------------------------------------------------------------------------------------
def test_n_choices_equal_separate_requests_with_llama_cpp_seeds(oai):
    """Choice i is sampled with the seed + i (llama-server's n_cmpl children), from the prompt evaluated once."""
    r = oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, n=3, seed=40, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    singles = [oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, seed=40 + i, temperature=1.0)
               for i in range(3)]
    assert [c.text for c in r.choices] == [s.choices[0].text for s in singles]
    assert len({c.text for c in r.choices}) > 1
    assert r.usage.prompt_tokens == singles[0].usage.prompt_tokens
    assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    again = oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, n=3, seed=40, temperature=1.0)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]


def test_n_chat_streamed_carries_the_choice_index(oai):
    kw = dict(model=NAME, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=16, n=3, seed=8,
              logprobs=True, top_logprobs=1)
    whole = oai.chat.completions.create(**kw)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    texts, probs, reasons = ["", "", ""], [[], [], []], [None] * 3
    for chunk in oai.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            probs[c.index] += [x.logprob for x in (c.logprobs.content if c.logprobs else [])]
            reasons[c.index] = c.finish_reason or reasons[c.index]
    assert texts == [c.message.content for c in whole.choices]
    assert probs == [[x.logprob for x in c.logprobs.content] for c in whole.choices]
    assert reasons == [c.finish_reason for c in whole.choices]
    single = oai.chat.completions.create(**{**kw, "n": 1, "seed": 10})
    assert single.choices[0].message.content == whole.choices[2].message.content


def test_n_with_json_schema_and_legacy_offsets(oai):
    r = oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=300, n=2, seed=3, logprobs=1, extra_body={
        "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMAS[3]}}})
    for c in r.choices:
        jsonschema_rs.validate(SCHEMAS[3], json.loads(c.text))
        assert c.logprobs.text_offset[0] == len(PROMPT)  # each choice counts from the prompt's end


@pytest.mark.parametrize("n", [0, 17, -1])
def test_n_out_of_range_is_400(server, n):
    with server.client() as c:
        r = c.post("/v1/completions", json={"prompt": PROMPT, "n": n})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_banning_every_allowed_token_is_a_clear_error(server, api):
    """Banning every token a grammar allows leaves nothing to sample: a 400 naming logit_bias, not a NaN draw or a
    500."""
    from runtime.grammar import GrammarConstraint
    allowed = GrammarConstraint(Grammar.parse('root ::= "a" | "b"'), api.tokenizer).allowed()
    assert 0 < len(allowed) < 10
    banned = [[int(t), False] for t in allowed]
    with server.client() as c:
        for temperature in (0, 0.8):
            r = c.post("/completion", json={"prompt": PROMPT, "grammar": 'root ::= "a" | "b"', "n_predict": 2,
                                            "temperature": temperature, "logit_bias": banned})
            assert r.status_code == 400 and "logit_bias" in r.json()["error"]["message"], r.text
