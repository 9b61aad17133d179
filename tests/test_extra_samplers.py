"""Issue 14, deliverable 3: llama.cpp's extra samplers (typical, top-n-sigma, XTC, DRY, mirostat 1 and 2) and the
sampler sequence, in runtime.sampling, on the server's routes, `toolkit run` and the Python API.

Oracle: llama.cpp itself, through llama-cpp-python's low-level API — each sampler (llama_sampler_init_typical, ...) and
llama.cpp's default chain applied with llama_sampler_apply to a llama_token_data_array built from fixed logits; the
surviving candidates and their logits must equal ours, and mirostat's mu (read from the sampler's state) must follow
our update for the token llama.cpp drew. DRY's sequence breakers on stories260K's SentencePiece vocabulary and on
byte-level BPE ones (../shared/fixtures/llama-vocab). llama-server b11434 (bench-data, skipped when absent) for the
defaults and the sequence (/props) and for how sampler names and letters read. The random draws are numpy's, not
llama.cpp's mt19937, so only the deterministic parts are compared (XTC with probability 1)."""
from __future__ import annotations

import ctypes

import httpx
import numpy as np
import pytest

from runtime.sampling import (SAMPLERS, Sampler, SamplingParams, apply_dry, dry_breakers, mirostat_mu, mirostat_v1,
                              mirostat_v2, top_n_sigma, typical, xtc)
from server.features import sampler_sequence
from tests.helpers import run_toolkit, running_llama_server
from tests.test_server import KEY, _serve, _stop

L = pytest.importorskip("llama_cpp")
PROMPT = "Once upon a time"


def logit_sets(n_vocab: int = 200, count: int = 6) -> list[np.ndarray]:
    """Float32 logits of several shapes: flat-ish, peaked, with ties."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(count):
        x = rng.normal(size=n_vocab) * (0.5 + i)
        if i % 3 == 2:
            x[:10] = x[0]  # ties
        out.append(x.astype(np.float32))
    return out


def llama_apply(smpl, logits: np.ndarray) -> tuple[list[tuple[int, float, float]], int]:
    """llama.cpp's sampler on the whole vocabulary: the candidates left (id, logit, p) and the selected index."""
    n = logits.size
    arr = (L.llama_token_data * n)()
    for i, v in enumerate(logits.tolist()):
        arr[i].id, arr[i].logit, arr[i].p = i, v, 0.0
    cur = L.llama_token_data_array(data=ctypes.cast(arr, ctypes.POINTER(L.llama_token_data)), size=n, selected=-1,
                                   sorted=False)
    L.llama_sampler_apply(smpl, ctypes.byref(cur))
    return [(cur.data[i].id, cur.data[i].logit, cur.data[i].p) for i in range(cur.size)], cur.selected


def kept(candidates) -> dict[int, float]:
    """The candidates llama.cpp still allows (masked ones, set to -inf, are gone from ours)."""
    return {t: v for t, v, _ in candidates if v > -np.inf}


def chain_kept(samplers, history: list[int], logits: np.ndarray) -> dict[int, float]:
    """The candidates llama.cpp's sampler chain of `samplers` (in order; freed with it) keeps after `history`."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    for s in samplers:
        L.llama_sampler_chain_add(chain, s)
    for t in history:
        L.llama_sampler_accept(chain, t)
    try:
        return kept(llama_apply(chain, logits)[0])
    finally:
        L.llama_sampler_free(chain)


def ours(fn, logits, *args):
    ids, vals = fn(np.arange(logits.size), logits.astype(np.float64), *args)
    return ids, vals


# -- each sampler against llama.cpp's ----------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.05, 0.3, 0.7, 0.95, 1.0])
def test_typical_equals_llama_cpp(p):
    for logits in logit_sets():
        ref, _ = llama_apply(L.llama_sampler_init_typical(p, 0), logits)
        ids, _ = ours(typical, logits, p)
        if p >= 1.0:
            assert sorted(ids.tolist()) == sorted(t for t, _, _ in ref)
        else:  # the same tokens in the same (most typical first) order
            assert ids.tolist() == [t for t, _, _ in ref]


@pytest.mark.parametrize("n", [-1.0, 0.0, 0.5, 1.0, 2.0, 3.5])
def test_top_n_sigma_equals_llama_cpp(n):
    for logits in logit_sets():
        ref = kept(llama_apply(L.llama_sampler_init_top_n_sigma(n), logits)[0])
        ids, vals = ours(top_n_sigma, logits, n)
        assert set(ids.tolist()) == set(ref)
        np.testing.assert_allclose(vals, [ref[t] for t in ids.tolist()], rtol=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 0.01, 0.05, 0.1, 0.3, 0.5, 0.6])
def test_xtc_equals_llama_cpp(threshold):
    """Probability 1: XTC always cuts, so its result is deterministic."""
    for logits in logit_sets():
        ref = kept(llama_apply(L.llama_sampler_init_xtc(1.0, threshold, 0, 1), logits)[0])
        ids, _ = ours(xtc, logits, 1.0, threshold, np.random.default_rng(0))
        assert set(ids.tolist()) == set(ref)


def mirostat_state(smpl, version: int) -> float:
    """mu from llama.cpp's sampler state (struct llama_sampler_mirostat / _v2 in src/llama-sampler.cpp)."""
    head = [("n_vocab", ctypes.c_int32)] if version == 1 else []
    tail = [("m", ctypes.c_int32)] if version == 1 else []

    class State(ctypes.Structure):
        _fields_ = head + [("seed", ctypes.c_uint32), ("seed_cur", ctypes.c_uint32), ("tau", ctypes.c_float),
                           ("eta", ctypes.c_float)] + tail + [("mu", ctypes.c_float)]
    return ctypes.cast(smpl.contents.ctx, ctypes.POINTER(State)).contents.mu


@pytest.mark.parametrize("version, tau, eta", [(1, 5.0, 0.1), (1, 2.0, 0.5), (1, 3.0, 0.3), (2, 5.0, 0.1),
                                               (2, 2.0, 0.5), (2, 0.5, 1.0)])
def test_mirostat_equals_llama_cpp(version, tau, eta):
    """Step by step over changing logits: the candidates mirostat keeps, and mu after the token llama.cpp drew."""
    sets = logit_sets(count=9)
    smpl = (L.llama_sampler_init_mirostat(sets[0].size, 3, tau, eta, 100) if version == 1 else
            L.llama_sampler_init_mirostat_v2(3, tau, eta))
    mu = 2.0 * tau
    assert mirostat_state(smpl, version) == pytest.approx(mu)
    for logits in sets:
        ref, selected = llama_apply(smpl, logits)
        ids, vals = (mirostat_v1(np.arange(logits.size), logits.astype(np.float64), mu, logits.size) if version == 1
                     else mirostat_v2(np.arange(logits.size), logits.astype(np.float64), mu))
        assert ids.tolist() == [t for t, _, _ in ref]
        chosen = ref[selected][0]
        logp = vals - vals.max() - np.log(np.sum(np.exp(vals - vals.max())))
        mu = mirostat_mu(mu, float(logp[ids.tolist().index(chosen)]), tau, eta)
        assert mirostat_state(smpl, version) == pytest.approx(mu, rel=1e-4, abs=1e-4)
    L.llama_sampler_free(smpl)


def test_mirostat_huge_k_keeps_everything():
    """Where mirostat 1's k exceeds what an int holds, llama.cpp's float-to-int conversion is undefined (on x86 it
    gives INT_MIN, so one token is kept); ours keeps every candidate, the limit of k -> infinity."""
    logits = logit_sets(count=1)[0] * 0.1  # nearly flat: s_hat near 0, k = (...)^(1/s_hat) overflows
    smpl = L.llama_sampler_init_mirostat(logits.size, 3, 8.0, 0.3, 100)
    ref, _ = llama_apply(smpl, logits)
    L.llama_sampler_free(smpl)
    ids, _ = mirostat_v1(np.arange(logits.size), logits.astype(np.float64), 16.0, logits.size)
    assert len(ref) == 1 and ids.size == logits.size


@pytest.fixture(scope="module")
def vocab(stories260k_f32):
    """stories260K's vocabulary in llama.cpp (for its DRY sampler, which tokenizes the breakers) and in ours."""
    from common.ggufio import GGUFFile
    from runtime.tokenizer import Tokenizer
    ref = L.Llama(str(stories260k_f32), vocab_only=True, verbose=False)
    with GGUFFile(stories260k_f32) as g:
        tok = Tokenizer.from_gguf(g)
    yield L.llama_model_get_vocab(ref.model), tok, ref
    ref.close()


DRY_TEXTS = ["Lily and Tom went to the park. Lily and Tom went to the park. Lily and Tom went to the",
             "the cat: the cat: the cat: the cat",
             "He said \"go\" and he said \"go\" and he said",
             "a b c d a b c d a b c d a b c",
             "Once upon a time\nOnce upon a time\nOnce upon a"]


@pytest.mark.parametrize("multiplier, base, allowed, last_n, breakers", [
    (0.8, 1.75, 2, 64, ("\n", ":", '"', "*")),
    (2.0, 1.5, 1, 32, ("\n", ":", '"', "*")),
    (1.0, 3.0, 3, 64, ()),
    (0.8, 1.75, 2, 16, (" park", "he said", "and")),  # breakers of several tokens
    (1e30, 1e30, 0, 64, (":",)),                       # huge: the penalty saturates, stays finite here
])
def test_dry_equals_llama_cpp(vocab, multiplier, base, allowed, last_n, breakers):
    lvocab, tok, _ = vocab
    rng = np.random.default_rng(3)
    params = SamplingParams(dry_multiplier=multiplier, dry_base=base, dry_allowed_length=allowed,
                            dry_penalty_last_n=last_n, dry_sequence_breakers=breakers)
    ours_breakers = dry_breakers(tok, breakers)
    penalized = 0
    for text in DRY_TEXTS:
        history = tok.encode(text, add_bos=True)
        c_breakers = (ctypes.c_char_p * max(len(breakers), 1))(*[b.encode() for b in breakers])
        smpl = L.llama_sampler_init_dry(lvocab, multiplier, base, allowed, last_n, c_breakers, len(breakers))
        for t in history:
            L.llama_sampler_accept(smpl, t)
        logits = (rng.normal(size=tok.n_vocab) * 3).astype(np.float32)
        ref = llama_apply(smpl, logits)[0]
        L.llama_sampler_free(smpl)
        got = apply_dry(np.arange(tok.n_vocab), logits.astype(np.float64), history, params, ours_breakers)
        want = np.array([v for _, v, _ in sorted(ref)], dtype=np.float64)
        np.testing.assert_allclose(np.maximum(got, -3.4e38), np.maximum(want, -3.4e38), rtol=1e-5, err_msg=text)
        penalized += int((want != logits).any())
    assert penalized >= 2  # the comparison is not vacuous


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "gpt-2"])
def test_dry_breakers_of_bpe_vocabularies_equal_llama_cpp(shared_fixtures, name):
    """Byte-level BPE pieces (a breaker inside or at the end of a token, multi-byte breakers) as llama.cpp reads
    them: the DRY penalties after texts that repeat across breakers equal llama.cpp's."""
    from common.ggufio import GGUFFile
    from runtime.tokenizer import Tokenizer
    path = shared_fixtures / "llama-vocab" / f"ggml-vocab-{name}.gguf"
    ref = L.Llama(str(path), vocab_only=True, verbose=False)
    with GGUFFile(path) as g:
        tok = Tokenizer.from_gguf(g)
    breakers = ("\n", ":", '"', "*", " said", "。", "——")
    params = SamplingParams(dry_multiplier=0.8, dry_allowed_length=2, dry_sequence_breakers=breakers)
    ours_breakers = dry_breakers(tok, breakers)
    c_breakers = (ctypes.c_char_p * len(breakers))(*[b.encode() for b in breakers])
    rng = np.random.default_rng(5)
    penalized = 0
    for text in DRY_TEXTS + ["他说。他说。他说。他说", "a——b a——b a——b a——b", 'x said "y" x said "y" x said']:
        history = tok.encode(text, add_bos=False)
        smpl = L.llama_sampler_init_dry(L.llama_model_get_vocab(ref.model), 0.8, 1.75, 2, 64, c_breakers,
                                        len(breakers))
        for t in history:
            L.llama_sampler_accept(smpl, t)
        focus = np.array(sorted(set(history)))  # the tokens DRY can touch, and some others
        logits = (rng.normal(size=tok.n_vocab) * 3).astype(np.float32)
        ref_out = dict((t, v) for t, v, _ in llama_apply(smpl, logits)[0])
        L.llama_sampler_free(smpl)
        got = apply_dry(np.arange(tok.n_vocab), logits.astype(np.float64), history, params, ours_breakers)
        want = np.array([ref_out[t] for t in range(tok.n_vocab)])
        np.testing.assert_allclose(got[focus], want[focus], rtol=1e-6, err_msg=text)
        assert (got != logits).sum() == (want != logits).sum(), text
        penalized += int((want != logits).any())
    ref.close()
    assert penalized >= 3


def test_default_chain_equals_llama_cpp(vocab):
    """llama.cpp's default sequence (penalties, DRY, top-n-sigma, top-k, typical, top-p, min-p, XTC, temperature)
    with every sampler on, as common_sampler_init builds it, before the draw."""
    lvocab, tok, _ = vocab
    params = SamplingParams(temp=0.7, top_k=30, top_p=0.9, min_p=0.02, repeat_penalty=1.3, repeat_last_n=32,
                            presence_penalty=0.2, frequency_penalty=0.1, typ_p=0.95, top_n_sigma=2.0,
                            xtc_probability=1.0, xtc_threshold=0.05, dry_multiplier=0.8)
    history = tok.encode(DRY_TEXTS[0], add_bos=True)
    rng = np.random.default_rng(11)
    for _ in range(4):
        logits = (rng.normal(size=tok.n_vocab) * 3).astype(np.float32)
        c_breakers = (ctypes.c_char_p * 4)(*[b.encode() for b in params.dry_sequence_breakers])
        ref = chain_kept((L.llama_sampler_init_penalties(tok.n_vocab, 32, 1.3, 0.1, 0.2),
                          L.llama_sampler_init_dry(lvocab, 0.8, 1.75, 2, 64, c_breakers, 4),
                          L.llama_sampler_init_top_n_sigma(2.0), L.llama_sampler_init_top_k(30),
                          L.llama_sampler_init_typical(0.95, 0), L.llama_sampler_init_top_p(0.9, 0),
                          L.llama_sampler_init_min_p(0.02, 0), L.llama_sampler_init_xtc(1.0, 0.05, 0, 1),
                          L.llama_sampler_init_temp(0.7)), history, logits)
        ids, vals = Sampler(params, tok).candidates(logits, history)
        assert set(ids.tolist()) == set(ref) and len(ref) > 1
        np.testing.assert_allclose(vals, [ref[t] for t in ids.tolist()], rtol=1e-5)


# -- the sequence ------------------------------------------------------------------------------------------------
def test_sequence_order_matters():
    """XTC with threshold 0 removes all but the least probable candidate: after top-k 2 that is the second best,
    before it the least probable token of the vocabulary."""
    logits = logit_sets()[1]
    order = np.argsort(-logits)
    base = dict(top_k=2, top_p=1.0, min_p=0.0, xtc_probability=1.0, xtc_threshold=0.0, seed=1)
    assert Sampler(SamplingParams(**base, samplers=("top_k", "xtc", "temperature"))).sample(logits, []) == order[1]
    assert Sampler(SamplingParams(**base, samplers=("xtc", "top_k", "temperature"))).sample(logits, []) == order[-1]


def test_greedy_happens_at_the_temperature_step():
    """temp 0 is llama.cpp's temperature sampler keeping the largest logit: XTC before it still cuts the top."""
    logits = logit_sets()[1]
    order = np.argsort(-logits)
    p = SamplingParams(temp=0.0, top_k=3, xtc_probability=1.0, xtc_threshold=0.0, min_p=0.0, top_p=1.0)
    assert Sampler(p).sample(logits, []) == order[2]
    assert Sampler(SamplingParams(temp=0.0)).sample(logits, []) == order[0]


def test_greedy_default_chain_equals_llama_cpp():
    """temp 0 with the default samplers (top-k 40, top-p 0.95, min-p 0.05 before it): the token llama.cpp's chain
    keeps, also with the largest logit masked (ignore_eos, a ban); with repetition penalties on (no shortcut: the
    chain runs) the penalized logits decide."""
    history = [3, 5, 5, 8]
    for logits in logit_sets(count=9):
        masked = logits.copy()
        masked[int(np.argmax(logits))] = -np.inf
        for x in (logits, masked):
            for penalty in (1.0, 1.5):
                ref = chain_kept((L.llama_sampler_init_penalties(x.size, 64, penalty, 0.0, 0.0),
                                  L.llama_sampler_init_top_k(40), L.llama_sampler_init_top_p(0.95, 1),
                                  L.llama_sampler_init_min_p(0.05, 1), L.llama_sampler_init_temp(0.0)), history, x)
                assert list(ref) == [Sampler(SamplingParams(temp=0.0, repeat_penalty=penalty)).sample(x, history)]


def test_mirostat_zero_target_is_greedy():
    """tau = 0, eta = 0: mu stays 0, and mirostat 2 keeps only tokens of surprise <= 0, i.e. the most probable."""
    for logits in logit_sets():
        s = Sampler(SamplingParams(mirostat=2, mirostat_tau=0.0, mirostat_eta=0.0, seed=5))
        assert all(s.sample(logits, []) == int(np.argmax(logits)) for _ in range(5))


@pytest.mark.parametrize("field, value", [("typ_p", 1.5), ("mirostat", 3), ("xtc_probability", -0.1),
                                          ("dry_base", 0.5), ("dry_allowed_length", -1), ("mirostat_tau", -1.0),
                                          ("top_n_sigma", -2.0), ("dry_penalty_last_n", 1.5),
                                          ("samplers", ("top_k", "bogus")), ("dry_sequence_breakers", ("",))])
def test_settings_out_of_range_are_refused(field, value):
    from common.errors import UserError
    with pytest.raises(UserError, match=field):
        SamplingParams(**{field: value})


def test_extreme_settings_still_sample(vocab):
    _, tok, _ = vocab
    history = tok.encode(DRY_TEXTS[3], add_bos=True)
    logits = logit_sets(tok.n_vocab)[0]
    for p in (SamplingParams(dry_multiplier=1e308, dry_base=1e308, dry_allowed_length=0),
              SamplingParams(mirostat=1, mirostat_tau=1e308, mirostat_eta=1e308),
              SamplingParams(mirostat=2, mirostat_tau=1e308, mirostat_eta=1e308),
              SamplingParams(mirostat=1, temp=1e-310), SamplingParams(typ_p=0.0, top_k=0, top_n_sigma=1e-300)):
        s = Sampler(p, tok)
        for _ in range(3):
            assert 0 <= s.sample(logits, history) < tok.n_vocab
            assert np.isfinite(s.mu)


# -- end to end: the server, `toolkit run`, the Python API --------------------------------------------------------
EXTRA = {"typical_p": 0.9, "top_n_sigma": 1.5, "xtc_probability": 0.5, "xtc_threshold": 0.2, "dry_multiplier": 0.8,
         "dry_base": 2.0, "dry_allowed_length": 3, "dry_penalty_last_n": 32, "dry_sequence_breakers": ["\n", "."],
         "samplers": ["penalties", "dry", "top-k", "typ", "top_p", "min_p", "xtc", "temp"], "seed": 4}


@pytest.fixture(scope="module")
def server(stories260k_f32, tmp_path_factory):
    srv = _serve(stories260k_f32, tmp_path_factory.mktemp("samplers-log") / "stderr.txt", "-c", 512,
                 "--api-key", KEY)
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def api(stories260k_f32):
    from runtime.api import Llama
    llm = Llama(str(stories260k_f32), n_ctx=512, verbose=False)
    yield llm
    llm.close()


def second_best(api) -> str:
    api.reset()
    api.eval(api.tokenize(PROMPT.encode()))
    return api.detokenize([int(np.argsort(-api.scores[-1])[1])]).decode()


def test_server_takes_the_settings_on_every_route(server, api):
    with server.client() as c:
        for route, body in (("/completion", {"prompt": PROMPT, "n_predict": 12}),
                            ("/v1/completions", {"prompt": PROMPT, "max_tokens": 12}),
                            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 12}),
                            ("/completion", {"prompt": PROMPT, "n_predict": 12, "mirostat": 1}),
                            ("/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "mirostat": 2,
                                                 "mirostat_tau": 3.0, "mirostat_eta": 0.2})):
            r = c.post(route, json={**EXTRA, **body})
            assert r.status_code == 200, (route, r.text)
        # deterministic effects: mirostat 2 aiming at no surprise is greedy; XTC after top-k 2 takes the second best
        greedy = c.post("/completion", json={"prompt": PROMPT, "n_predict": 20, "temperature": 0}).json()["content"]
        miro = c.post("/completion", json={"prompt": PROMPT, "n_predict": 20, "mirostat": 2, "mirostat_tau": 0,
                                           "mirostat_eta": 0, "seed": 9}).json()["content"]
        assert miro == greedy
        for samplers in (["top_k", "xtc", "temperature"], "kxt"):
            r = c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 1, "top_k": 2, "samplers": samplers,
                                                "xtc_probability": 1, "xtc_threshold": 0})
            assert r.json()["choices"][0]["text"] == second_best(api)
        dry = c.post("/completion", json={"prompt": PROMPT, "n_predict": 60, "temperature": 0, "dry_multiplier": 2.0,
                                          "dry_allowed_length": 1}).json()["content"]
        plain = c.post("/completion", json={"prompt": PROMPT, "n_predict": 60, "temperature": 0}).json()["content"]
        assert dry != plain
        assert dry == api.create_completion(PROMPT, max_tokens=60, temperature=0, dry_multiplier=2.0,
                                            dry_allowed_length=1)["choices"][0]["text"]


@pytest.mark.parametrize("field, value", [("typical_p", 1.5), ("mirostat", 3), ("mirostat_tau", -1),
                                          ("xtc_probability", 2), ("xtc_threshold", -0.5), ("dry_multiplier", -1),
                                          ("dry_base", 0.5), ("dry_allowed_length", -1), ("dry_penalty_last_n", -1),
                                          ("top_n_sigma", "NaN"), ("dry_sequence_breakers", "[]"),
                                          ("samplers", '["top_k", "bogus"]'), ("samplers", '"kq"')])
@pytest.mark.parametrize("route", ["/completion", "/v1/completions"])
def test_out_of_range_is_400_naming_the_field(server, route, field, value):
    with server.client() as c:
        r = c.post(route, content=f'{{"prompt": "x", "{field}": {value}}}', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and field in r.json()["error"]["message"], r.text


def test_run_flags(stories260k_f32, api):
    greedy = run_toolkit("run", "-m", stories260k_f32, "-p", PROMPT, "-n", 20, "--temp", 0)
    miro = run_toolkit("run", "-m", stories260k_f32, "-p", PROMPT, "-n", 20, "--mirostat", 2, "--mirostat-ent", 0,
                       "--mirostat-lr", 0, "--seed", 3)
    assert miro.returncode == 0 and miro.stdout == greedy.stdout, miro.stderr
    for order in (["--samplers", "top_k;xtc;temperature"], ["--sampler-seq", "kxt"]):
        xtc_run = run_toolkit("run", "-m", stories260k_f32, "-p", PROMPT, "-n", 1, "--top-k", 2, *order,
                              "--xtc-probability", 1, "--xtc-threshold", 0)
        assert xtc_run.returncode == 0 and xtc_run.stdout[len(PROMPT):].startswith(second_best(api))
    dry_args = ["--dry-multiplier", 2.0, "--dry-allowed-length", 1, "--dry-base", 1.75, "--dry-penalty-last-n", 64,
                "--dry-sequence-breaker", "\n", "--dry-sequence-breaker", ":"]
    dry = run_toolkit("run", "-m", stories260k_f32, "-p", PROMPT, "-n", 40, "--temp", 0, *dry_args)
    expected = api.create_completion(PROMPT, max_tokens=40, temperature=0, dry_multiplier=2.0, dry_allowed_length=1,
                                     dry_sequence_breakers=["\n", ":"])["choices"][0]["text"]
    assert dry.returncode == 0 and dry.stdout[len(PROMPT):-1] == expected
    ok = run_toolkit("run", "-m", stories260k_f32, "-p", PROMPT, "-n", 8, "--typical", 0.9, "--top-nsigma", 1.5,
                     "--mirostat", 1, "--dry-sequence-breaker", "none", "--dry-multiplier", 0.5)
    assert ok.returncode == 0, ok.stderr
    for args, flag in ((["--typical", 2], "--typical"), (["--mirostat", 3], "--mirostat"),
                       (["--xtc-threshold", -1], "--xtc-threshold"), (["--dry-base", 0.2], "--dry-base"),
                       (["--samplers", "top_k;bogus"], "--samplers"), (["--sampler-seq", "kq"], "--sampler-seq")):
        bad = run_toolkit("run", "-m", stories260k_f32, "-p", PROMPT, "-n", 1, *args)
        assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and flag in bad.stderr, bad.stderr


def test_python_api_names(api):
    greedy = api.create_completion(PROMPT, max_tokens=20, temperature=0)["choices"][0]["text"]
    miro = api.create_completion(PROMPT, max_tokens=20, mirostat_mode=2, mirostat_tau=0.0, mirostat_eta=0.0,
                                 seed=2)["choices"][0]["text"]
    assert miro == greedy
    chat = api.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=8, typical_p=0.9,
                                      top_n_sigma=1.0, xtc_probability=0.5, samplers=["top_k", "temperature"])
    assert chat["choices"][0]["message"]["role"] == "assistant"
    from common.errors import UserError
    for kw in ({"typical_p": 1.5}, {"mirostat_mode": 3}, {"samplers": "kq"}, {"dry_base": 0.0}):
        with pytest.raises(UserError, match=next(iter(kw))):
            api.create_completion(PROMPT, max_tokens=1, **kw)
    assert SAMPLERS == ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")


# -- llama-server's own defaults and sampler names ----------------------------------------------------------------
SETTINGS = ("top_n_sigma", "xtc_probability", "xtc_threshold", "typical_p", "dry_multiplier", "dry_base",
            "dry_allowed_length", "dry_penalty_last_n", "mirostat", "mirostat_tau", "mirostat_eta", "temperature",
            "top_k", "top_p", "min_p", "repeat_last_n", "repeat_penalty", "samplers")


@pytest.fixture(scope="module")
def llama_server(stories260k_f32, tmp_path_factory):
    log = tmp_path_factory.mktemp("llama-server-samplers") / "log.txt"
    with running_llama_server(stories260k_f32, log, "-c", "512", "-np", "1", "-t", "1") as url:
        yield url


@pytest.mark.slow
def test_defaults_and_order_equal_llama_server(llama_server, server):
    """/props' default generation settings: every sampler setting and the sequence as llama-server b11434 has them."""
    theirs = httpx.get(llama_server + "/props", timeout=10).json()["default_generation_settings"]["params"]
    with server.client() as c:
        ours_ = c.get("/props").json()["default_generation_settings"]["params"]
    for key in SETTINGS:
        assert ours_[key] == pytest.approx(theirs[key]) if key != "samplers" else ours_[key] == theirs[key], key


@pytest.mark.slow
@pytest.mark.parametrize("samplers", ["kxt", "edskypmxt", "yt", ["top-k", "nucleus", "temp", "typ"],
                                      ["TOP_K", "minp", "top_n_sigma", "xtc", "penalties", "dry", "typ_p"]])
def test_sampler_names_read_as_llama_server_reads_them(llama_server, samplers):
    r = httpx.post(llama_server + "/completion", json={"prompt": PROMPT, "n_predict": 1, "samplers": samplers},
                   timeout=60).json()
    assert list(sampler_sequence(samplers)) == r["generation_settings"]["samplers"]
