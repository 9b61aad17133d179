"""Continuous batching (runtime.batching): sequences generating at the same time on one model share native passes,
and what each generates is what it generates alone — greedy and seeded, started at different times, with prompts and
lengths of their own, on F32 and Q8_0 files. The oracle for each sequence is the same request run alone, before any
other; the batching itself is checked from the batcher's own counts (passes, sequences per pass). Also here: the
slots' prompt cache through the openai client, the quantized cache's head-size rule, and the context shift (against
llama.cpp's rule, replayed)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime.generate import Session
from runtime.sampling import SamplingParams
from tests.helpers import quantized

# (prompt, tokens to generate, sampling): different lengths, greedy and seeded
REQUESTS = [("Once upon a time", 40, SamplingParams(temp=0)),
            ("The little dog", 25, SamplingParams(temp=0.8, seed=3)),
            ("Lily and Tom went to the park", 33, SamplingParams(temp=0.9, top_k=20, seed=11)),
            ("One day", 12, SamplingParams(temp=0))]


@pytest.fixture(scope="module", params=["F32", "Q8_0"])
def model_file(request, stories260k_f32, tmp_path_factory):
    return quantized(stories260k_f32, tmp_path_factory.mktemp("batching"), request.param)


def _generate(session: Session, prompt: str, n: int, params: SamplingParams, start: threading.Event | None = None,
              out: list | None = None) -> list[int]:
    if start is not None:
        start.wait(10)
    session.reset()
    tokens = list(session.generate(session.tokenizer.encode(prompt, add_bos=True), n, params, ignore_eos=True))
    if out is not None:
        out.append(tokens)
    return tokens


def test_sequences_generate_alone_what_they_generate_together(model_file):
    base = Session(model_file, n_ctx=128, n_threads=2)
    try:
        alone = [_generate(base, *r) for r in REQUESTS]
        assert base.batcher.n_sequences == base.batcher.n_passes  # alone: one sequence per pass
        slots = [base] + [base.new_slot() for _ in REQUESTS[1:]]
        passes0, seqs0 = base.batcher.n_passes, base.batcher.n_sequences
        # the sequences join at different steps: each starts when the one before has generated a few tokens
        outs = [[] for _ in REQUESTS]
        starts = [threading.Event() for _ in REQUESTS]
        threads = [threading.Thread(target=_generate, args=(s, *r, e, o))
                   for s, r, e, o in zip(slots, REQUESTS, starts, outs)]
        for t in threads:
            t.start()
        for i, e in enumerate(starts):
            e.set()
            if i + 1 < len(starts):  # let this one run a few passes before the next joins
                target = base.batcher.n_passes + 3
                while base.batcher.n_passes < target and threads[i].is_alive():
                    threading.Event().wait(0.001)
        for t in threads:
            t.join(60)
        together = [o[0] for o in outs]
        for i, (a, b) in enumerate(zip(alone, together)):
            assert a == b, f"request {i}: alone {a} vs batched {b}"
        passes, seqs = base.batcher.n_passes - passes0, base.batcher.n_sequences - seqs0
        # every token of every request went through a pass, and passes carried several sequences (how many share a
        # pass depends on the scheduling of the threads: on a loaded machine 114 sequences took 81 passes)
        assert seqs >= sum(n for _, n, _ in REQUESTS)
        assert passes < 0.9 * seqs, (passes, seqs)
    finally:
        base.close()


def test_a_failing_pass_fails_its_requests_and_the_batcher_goes_on(stories260k_f32):
    base = Session(stories260k_f32, n_ctx=16, n_threads=1)
    try:
        with pytest.raises(ValueError, match="context full"):
            base.batcher.forward(list(range(3, 30)), base.cache)
        assert base.eval([1, 2, 3]).shape == (base.model.hp.n_vocab,)
    finally:
        base.close()


# -- the server: prompt cache through the openai client --------------------------------------------------------------
@pytest.fixture(scope="module")
def server(stories260k_f32, tmp_path_factory):
    from tests.test_server import _serve, _stop
    srv = _serve(stories260k_f32, tmp_path_factory.mktemp("batching-log") / "stderr.txt", "-c", 1024,
                 "--parallel", 2)
    yield srv
    _stop(srv)


def test_a_chat_evaluates_only_each_turns_new_tokens(server):
    """An 8-turn conversation re-sent whole each turn: from turn 2 on, the tokens evaluated (`timings.prompt_n`) are
    only those after the part the slot has cached — at most the tokens the prompt grew by; with cache_prompt false,
    all of them, and the same reply."""
    import openai
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
    messages, previous = [], 0
    for turn in range(8):
        messages.append({"role": "user", "content": f"Tell me part {turn + 1} of the story about the cat."})
        r = oai.chat.completions.create(model="any", messages=messages, max_tokens=12, temperature=0)
        prompt, evaluated = r.usage.prompt_tokens, r.model_extra["timings"]["prompt_n"]
        if turn == 0:
            assert evaluated == prompt
        else:
            assert 1 <= evaluated <= prompt - previous, (turn, evaluated, prompt, previous)
        previous = prompt
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
    whole = oai.chat.completions.create(model="any", messages=messages[:-1], max_tokens=12, temperature=0,
                                        extra_body={"cache_prompt": False})
    assert whole.model_extra["timings"]["prompt_n"] == whole.usage.prompt_tokens == previous
    assert whole.choices[0].message.content == messages[-1]["content"]


def test_a_quantized_cache_needs_whole_blocks_per_head(stories260k_f32):
    from common.errors import UserError
    with pytest.raises(UserError, match="a q8_0 KV cache needs heads of a multiple of 32 elements; this model's have 8"):
        Session(stories260k_f32, n_ctx=16, cache_type="q8_0")


# -- context shift -----------------------------------------------------------------------------------------------------
def shifted(context: list[int], n_ctx: int, n_keep: int, generated: list[int]) -> list[int]:
    """llama.cpp's context shift rule, replayed: before a token that does not fit, keep the first n_keep tokens and
    drop half of the n_left that follow them (the older half)."""
    ctx = list(context)
    for t in generated:
        if len(ctx) >= n_ctx:
            n_left = len(ctx) - n_keep
            ctx = ctx[:n_keep] + ctx[n_keep + n_left // 2:]
        ctx.append(t)
    return ctx


def test_context_shift_keeps_what_llama_cpps_rule_keeps(stories260k_f32):
    """A 2000-token generation in a 64-token context: the context after it is the one llama.cpp's shift rule gives,
    and the last token was sampled from the logits a fresh context holding the same tokens gives."""
    from runtime.arch import build
    s = Session(stories260k_f32, n_ctx=64, n_threads=1)
    try:
        s.context_shift, s.n_keep = True, 5
        prompt = s.tokenizer.encode("Once upon a time, there was a little girl", add_bos=True)
        steps = list(s.steps(prompt, 2000, SamplingParams(temp=0), ignore_eos=True))
        generated = [st.token for st in steps]
        assert len(generated) == 2000
        expected = shifted(prompt, 64, 5, generated)
        assert s.tokens == expected[:len(s.tokens)] and len(s.tokens) == len(expected)
        fresh = build(s.model, 1)
        cache = fresh.new_cache(64)
        logits = fresh.forward(expected[:-1], cache)[-1]
        assert np.array_equal(logits, steps[-1].logits)
    finally:
        s.close()


def test_run_with_context_shift(stories260k_f32):
    from tests.helpers import run_toolkit
    p = run_toolkit("run", "-m", stories260k_f32, "-p", "Once upon a time", "-n", 600, "-c", 64, "--temp", 0,
                    "--ignore-eos", "--context-shift", "--keep", -1)
    assert p.returncode == 0, p.stderr
    assert "sampling time" in p.stderr and "/   600 runs" in p.stderr, p.stderr
    p = run_toolkit("run", "-m", stories260k_f32, "-p", "Once upon a time", "-n", 600, "-c", 64, "--temp", 0,
                    "--ignore-eos")
    assert p.returncode == 0 and "/    59 runs" in p.stderr, p.stderr  # no shift: stops when the context is full


def test_python_api_reuses_the_conversation(stories260k_f32):
    """Llama.create_chat_completion re-sent with the whole conversation evaluates only the new turn's tokens (the
    session's prompt-eval count), and answers what a fresh model answers."""
    from runtime.api import Llama
    llm, fresh = Llama(str(stories260k_f32), verbose=False), Llama(str(stories260k_f32), verbose=False)
    try:
        messages = [{"role": "user", "content": "Tell me a story about a cat."}]
        first = llm.create_chat_completion(messages, max_tokens=16, temperature=0)
        messages += [first["choices"][0]["message"], {"role": "user", "content": "And then?"}]
        before = llm.session.timings.n_prompt + llm.session.timings.n_eval
        second = llm.create_chat_completion(messages, max_tokens=16, temperature=0)
        evaluated = llm.session.timings.n_prompt + llm.session.timings.n_eval - before
        # at most the tokens the prompt grew by, plus one evaluation per generated token (all 73 + 16 without reuse)
        assert evaluated <= second["usage"]["prompt_tokens"] - first["usage"]["prompt_tokens"] + 16
        assert second["choices"] == fresh.create_chat_completion(messages, max_tokens=16, temperature=0)["choices"]
    finally:
        llm.close()
        fresh.close()


def test_server_context_shift(stories260k_f32, tmp_path):
    """`toolkit serve --context-shift`: a 2000-token generation in a 256-token context completes (stop type limit),
    where without the shift the request is refused with the numbers."""
    from tests.test_server import _serve, _stop
    srv = _serve(stories260k_f32, tmp_path / "stderr.txt", "-c", 256, "--parallel", 1, "--context-shift", "--keep", 4)
    try:
        with srv.client(None) as c:
            r = c.post("/completion", json={"prompt": "Once upon a time", "n_predict": 2000, "ignore_eos": True,
                                            "temperature": 0}, timeout=300).json()
        assert r["tokens_predicted"] == 2000 and r["stop_type"] == "limit", r
    finally:
        _stop(srv)


def test_openai_routes_take_ignore_eos(server):
    """llama-server's `ignore_eos` on the OpenAI routes too: an end-of-generation token made certain by logit_bias
    ends the reply at once, unless ignored."""
    import httpx
    for route, body in (("/v1/completions", {"prompt": "Once upon a time"}),
                        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})):
        base = {**body, "max_tokens": 12, "temperature": 0, "logit_bias": {"2": 50}}
        ended = httpx.post(server.url + route, json=base, timeout=60).json()
        ignored = httpx.post(server.url + route, json={**base, "ignore_eos": True}, timeout=60).json()
        assert ended["usage"]["completion_tokens"] == 0 and ended["choices"][0]["finish_reason"] == "stop", ended
        assert ignored["usage"]["completion_tokens"] == 12 and ignored["choices"][0]["finish_reason"] == "length"
