"""Embeddings (issue 14, item 4) against llama.cpp: Llama.embed / create_embedding equal llama-cpp-python's
(embedding=True, the same pooling_type, normalize) on F32 files — the real stories260K and a tiny random Qwen2 — for
mean, cls, last and none pooling, f32 KV caches on both sides; the pooling a file's `<arch>.pooling_type` key sets is
the one llama.cpp takes; `toolkit serve --embedding` through the `openai` client (float and base64) equals
llama-cpp-python's Euclidean-normalized embeddings, bad input is a 400 in the OpenAI error shape, and without
--embedding the route answers 501 as llama-server (b11434) does. When bench-data has llama-server, its answers are
compared with ours field by field (every --embd-normalize kind)."""
from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import openai
import pytest

import native
from gguf import GGUFValueType as V

from common.ggufio import KV, GGUFFile
from converter.convert import convert_model
from fixtures import make_checkpoint
from runtime.api import Llama
from tests.helpers import running_llama_server
from tests.test_hardening import rewrite
from tests.test_server import _serve, _stop

llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = ["Once upon a time, there was a little girl named Lily.", "The cat sat on the mat.", "Lily"]
POOLINGS = {"none": 0, "mean": 1, "cls": 2, "last": 3}
TOL = 1e-4


@pytest.fixture(scope="module")
def models(stories260k_f32, tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    out = {"stories260K": stories260k_f32}
    for arch in ("qwen2", "phi3"):
        out[arch] = root / f"{arch}-f32.gguf"
        convert_model(make_checkpoint(arch, root / arch), outtype="f32", outfile=out[arch])
    return out


def both(path, pooling: int, n_ctx: int = 128, **kw):
    """llama.cpp's Llama and ours on the same file, embedding=True with `pooling`, f32 KV caches."""
    theirs = llama_cpp.Llama(str(path), embedding=True, pooling_type=pooling, n_ctx=n_ctx, n_threads=2, verbose=False,
                             type_k=0, type_v=0, **kw)
    ours = Llama(str(path), embedding=True, pooling_type=pooling, n_ctx=n_ctx, verbose=False, type_k=0, type_v=0, **kw)
    return theirs, ours


@pytest.mark.slow
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("name", ["stories260K", "qwen2"])
def test_embed_equals_llama_cpp(models, name, pooling):
    theirs, ours = both(models[name], POOLINGS[pooling])
    try:
        assert ours.pooling_type() == theirs.pooling_type() == POOLINGS[pooling]
        for text in TEXTS:
            assert ours.tokenize(text.encode()) == theirs.tokenize(text.encode())
        for normalize in (False, True):
            if pooling == "none":  # llama-cpp-python reads a second sequence's token rows from the wrong offset
                got = [ours.embed(t, normalize=normalize) for t in TEXTS]
                want = [theirs.embed(t, normalize=normalize) for t in TEXTS]
            else:
                got, want = ours.embed(TEXTS, normalize=normalize), theirs.embed(TEXTS, normalize=normalize)
            assert len(got) == len(want) == len(TEXTS)
            for g, w in zip(got, want):
                g, w = np.array(g), np.array(w)
                assert g.shape == w.shape == ((len(w), ours.n_embd()) if pooling == "none" else (ours.n_embd(),))
                assert np.abs(g - w).max() < TOL, (normalize, np.abs(g - w).max())
            if normalize and pooling != "none":
                assert np.allclose([np.linalg.norm(g) for g in got], 1.0, atol=1e-6)
    finally:
        theirs.close()
        ours.close()


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", [128, 512])
def test_longrope_factors_follow_the_context_as_llama_cpps(models, n_ctx):
    """Phi-3's LongRoPE rotates with the long factors when the context exceeds the trained one (256 here), whatever
    the input's length: a short input's embedding depends on n_ctx, in llama.cpp and here alike."""
    theirs, ours = both(models["phi3"], POOLINGS["mean"], n_ctx=n_ctx)
    try:
        got, want = np.array(ours.embed(TEXTS)), np.array(theirs.embed(TEXTS))
        assert got.shape == want.shape and np.abs(got - want).max() < TOL
    finally:
        theirs.close()
        ours.close()


@pytest.mark.slow
def test_create_embedding_is_llama_cpp_pythons(models):
    theirs, ours = both(models["stories260K"], POOLINGS["mean"])
    try:
        for given in (TEXTS, TEXTS[0]):
            got, want = ours.create_embedding(given, model="m"), theirs.create_embedding(given, model="m")
            assert {k: v for k, v in got.items() if k != "data"} == {k: v for k, v in want.items() if k != "data"}
            assert [{k: v for k, v in d.items() if k != "embedding"} for d in got["data"]] == \
                [{k: v for k, v in d.items() if k != "embedding"} for d in want["data"]]
            for g, w in zip(got["data"], want["data"]):
                assert np.abs(np.array(g["embedding"]) - np.array(w["embedding"])).max() < TOL
        # token ids are an input too: the text's tokens give the text's embedding
        ids = ours.tokenize(TEXTS[1].encode())
        assert ours.embed(ids) == ours.embed(TEXTS[1])
        assert ours.embed([ids, ids]) == [ours.embed(TEXTS[1])] * 2
        # truncate cuts at n_batch as there; without it a longer input is an error
        long = " ".join(["Lily and the dog played"] * 40)
        small_theirs, small_ours = both(models["stories260K"], POOLINGS["last"], n_batch=16)
        try:
            assert np.abs(np.array(small_ours.embed(long)) - np.array(small_theirs.embed(long))).max() < TOL
            with pytest.raises(Exception, match="exceed batch size of 16"):
                small_ours.embed(long, truncate=False)
        finally:
            small_theirs.close()
            small_ours.close()
    finally:
        theirs.close()
        ours.close()


@pytest.mark.slow
@pytest.mark.parametrize("key", [None, 1, 2, 3])
def test_default_pooling_is_the_files_as_llama_cpp_takes_it(models, tmp_path, key):
    """Unspecified (-1): the file's `llama.pooling_type`, else none — what llama.cpp's context reports."""
    path = models["stories260K"]
    if key is not None:
        path = rewrite(path, tmp_path / "pooled.gguf", {"llama.pooling_type": KV("llama.pooling_type", V.UINT32, key)})
    theirs, ours = both(path, -1)
    try:
        assert ours.pooling_type() == theirs.pooling_type() == (key or 0)
        got, want = np.array(ours.embed(TEXTS[0])), np.array(theirs.embed(TEXTS[0]))
        assert got.shape == want.shape and np.abs(got - want).max() < TOL
    finally:
        theirs.close()
        ours.close()


@pytest.mark.parametrize("nthreads", [1, 3])
def test_hidden_states_beside_logits_in_one_pass(models, nthreads):
    """The engine's guarantee holds with hidden states asked for: in one pass, a sequence that wants logits, one that
    wants hidden states only (no output matrix) and one that wants both get the bits passes of their own give; the
    logits are the output matrix (tied: the token embeddings) applied to the hidden states."""
    from runtime.arch import build
    from runtime.model import Model
    model = Model(str(models["qwen2"]))
    try:
        net = build(model, nthreads)
        rng = np.random.default_rng(0)
        seqs = [[int(t) for t in rng.integers(0, net.hp.n_vocab, n)] for n in (7, 1, 12)]
        alone_logits = [net.forward(s, net.new_cache(16, "f32"), all_logits=True) for s in seqs]
        alone_hidden = [net.hidden(s, net.new_cache(16, "f32")) for s in seqs]
        d, vocab = net.hp.n_embd, net.hp.n_vocab
        batch = [native.Seq(net.new_cache(16, "f32").kv, np.array(seqs[0], np.int32), 0,
                            np.empty((1, vocab), np.float32)),
                 native.Seq(net.new_cache(16, "f32").kv, np.array(seqs[1], np.int32), 0, None,
                            embd=np.empty((1, d), np.float32)),
                 native.Seq(net.new_cache(16, "f32").kv, np.array(seqs[2], np.int32), 0,
                            np.empty((12, vocab), np.float32), True, np.empty((12, d), np.float32))]
        native.forward_batch(net.engine, batch, nthreads)
        assert np.array_equal(batch[0].logits, alone_logits[0][-1:])
        assert np.array_equal(batch[1].embd, alone_hidden[1])
        assert np.array_equal(batch[2].logits, alone_logits[2]) and np.array_equal(batch[2].embd, alone_hidden[2])
        output = model.weights.get("output.weight", model.weights["token_embd.weight"]).data
        output = np.frombuffer(output, np.float32).reshape(vocab, d)  # an F32 file
        assert np.abs(alone_hidden[2] @ output.T - alone_logits[2]).max() < 1e-4
        # neither logits nor hidden states: the cache is filled all the same
        cache = net.new_cache(16, "f32")
        native.forward_batch(net.engine, [native.Seq(cache.kv, np.array(seqs[2][:5], np.int32), 0, None)], nthreads)
        cache.n = 5
        assert np.array_equal(net.forward(seqs[2][5:], cache, all_logits=True), alone_logits[2][5:])
        with pytest.raises(ValueError, match="embd buffer too small"):
            native.forward_batch(net.engine, [native.Seq(net.new_cache(16, "f32").kv, np.array(seqs[0], np.int32), 0,
                                                         None, embd=np.empty((6, d), np.float32))], nthreads)
        with pytest.raises(ValueError, match="embd must be contiguous float32"):
            native.forward_batch(net.engine, [native.Seq(net.new_cache(16, "f32").kv, np.array(seqs[0], np.int32), 0,
                                                         None, embd=np.empty((7, d), np.float64))], nthreads)
    finally:
        model.close()


def test_inputs_share_passes_and_long_ones_go_in_chunks(models):
    """runtime.embeddings evaluates consecutive inputs that fit in n_batch tokens in one pass and a longer one in
    chunks of n_batch; each input's hidden states are the bits of a pass of its own over the whole input."""
    from runtime.embeddings import embeddings, hidden_states
    llm = Llama(str(models["qwen2"]), n_ctx=64, n_batch=16, verbose=False, type_k=0, type_v=0)
    try:
        rng = np.random.default_rng(1)
        prompts = [[int(t) for t in rng.integers(0, llm.n_vocab(), n)] for n in (5, 9, 40, 3, 2)]
        session, net = llm.session, llm.session.net
        alone = [net.hidden(p, net.new_cache(64, "f32")) for p in prompts]
        before = session.batcher.n_passes
        got = hidden_states(session, prompts)
        assert session.batcher.n_passes - before == 1 + 3 + 1  # [5, 9], [40] in 16 + 16 + 8, [3, 2]
        assert all(np.array_equal(g, a) for g, a in zip(got, alone))
        pooled = embeddings(session, prompts, POOLINGS["last"], 2)
        assert all(np.allclose(p, a[-1] / np.linalg.norm(a[-1]), atol=1e-6) for p, a in zip(pooled, alone))
    finally:
        llm.close()


def test_a_pooling_this_runtime_lacks(models, tmp_path):
    """A file whose pooling_type is rank (a classifier head): it still generates; embeddings are a one-line error."""
    path = rewrite(models["stories260K"], tmp_path / "rank.gguf",
                   {"llama.pooling_type": KV("llama.pooling_type", V.UINT32, 4)})
    llm = Llama(str(path), n_ctx=64, verbose=False)
    try:
        assert llm.create_completion("Once", max_tokens=2, temperature=0)["choices"][0]["text"]
    finally:
        llm.close()
    with pytest.raises(Exception, match="llama.pooling_type = 4 is not a pooling this runtime has"):
        Llama(str(path), n_ctx=64, verbose=False, embedding=True)
    llm = Llama(str(path), n_ctx=64, verbose=False, embedding=True, pooling_type=1)
    try:
        assert llm.pooling_type() == 1
    finally:
        llm.close()


def test_embed_needs_embedding_true(models):
    llm = Llama(str(models["stories260K"]), n_ctx=64, verbose=False)
    try:
        with pytest.raises(Exception, match="embedding=True"):
            llm.embed("Lily")
    finally:
        llm.close()


# -- toolkit serve --embedding ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    srv = _serve(models["stories260K"], tmp_path_factory.mktemp("emb-log") / "stderr.txt", "-c", 64, "--embedding",
                 "--pooling", "mean", "-ctk", "f32", "-ctv", "f32")
    yield srv
    _stop(srv)


def from_base64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


@pytest.mark.slow
def test_openai_client_embeddings(server, models):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
    ref = llama_cpp.Llama(str(models["stories260K"]), embedding=True, pooling_type=POOLINGS["mean"], n_ctx=64,
                          n_threads=2, verbose=False, type_k=0, type_v=0)
    try:
        want = np.array(ref.embed(TEXTS, normalize=True))  # Euclidean: llama-server's default --embd-normalize 2
        n_tokens = sum(len(ref.tokenize(t.encode())) for t in TEXTS)
        ids = [ref.tokenize(t.encode()) for t in TEXTS]
    finally:
        ref.close()
    floats = client.embeddings.create(model="any", input=TEXTS, encoding_format="float")
    b64 = client.embeddings.create(model="any", input=TEXTS, encoding_format="base64")
    implicit = client.embeddings.create(model="any", input=TEXTS)  # the client asks base64 and decodes it itself
    by_ids = client.embeddings.create(model="any", input=ids)
    for r in (floats, b64, implicit, by_ids):
        assert r.object == "list" and r.model == "any"
        assert (r.usage.prompt_tokens, r.usage.total_tokens) == (n_tokens, n_tokens)
        assert [d.index for d in r.data] == [0, 1, 2] and all(d.object == "embedding" for d in r.data)
    got = {"float": np.array([d.embedding for d in floats.data]),
           "base64": np.array([from_base64(d.embedding) for d in b64.data]),
           "implicit": np.array([d.embedding for d in implicit.data]),
           "ids": np.array([d.embedding for d in by_ids.data])}
    for kind, g in got.items():
        assert g.shape == want.shape and np.abs(g - want).max() < TOL, kind
    assert np.array_equal(got["float"].astype(np.float32), got["base64"])
    one = client.embeddings.create(model="any", input=TEXTS[1], encoding_format="float")
    assert len(one.data) == 1 and np.abs(np.array(one.data[0].embedding) - want[1]).max() < TOL
    raw = httpx.post(server.url + "/v1/embeddings", json={"input": TEXTS[0], "embd_normalize": -1}, timeout=60).json()
    assert abs(np.linalg.norm(raw["data"][0]["embedding"]) - 1.0) > 1e-2  # unnormalized on request


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["mean", "none"])
def test_llama_cpp_route(models, tmp_path, pooling):
    """llama-server's own /embeddings (and /embedding): a list of {index, embedding: [vector, ...]}, every token's
    (unnormalized) with pooling none, the pooled one normalized otherwise; `content` on /v1/embeddings answers that
    shape too."""
    ref = llama_cpp.Llama(str(models["stories260K"]), embedding=True, pooling_type=POOLINGS[pooling], n_ctx=64,
                          n_threads=2, verbose=False, type_k=0, type_v=0)
    try:
        want = [np.array(ref.embed(t, normalize=pooling != "none")) for t in TEXTS]
    finally:
        ref.close()
    srv = _serve(models["stories260K"], tmp_path / "stderr.txt", "-c", 64, "--embedding", "--pooling", pooling,
                 "-ctk", "f32", "-ctv", "f32")
    try:
        for route, key in (("/embeddings", "input"), ("/embedding", "content"), ("/v1/embeddings", "content")):
            r = httpx.post(srv.url + route, json={key: TEXTS}, timeout=60)
            if route == "/v1/embeddings" and pooling == "none":
                assert r.status_code == 400  # checked before the body is read, as there
                continue
            assert r.status_code == 200, r.text
            got = r.json()
            assert [g["index"] for g in got] == [0, 1, 2] and all(set(g) == {"index", "embedding"} for g in got)
            for g, w in zip(got, want):
                g = np.array(g["embedding"])
                assert g.shape == (w if w.ndim == 2 else w[None]).shape and np.abs(g - w).max() < TOL, route
    finally:
        _stop(srv)


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["mean", "none"])
def test_llama_cpp_route_equals_llama_servers(models, tmp_path, pooling):
    flags = ("--embedding", "--pooling", pooling)
    srv = _serve(models["stories260K"], tmp_path / "stderr.txt", "-c", 64, "-ctk", "f32", "-ctv", "f32", *flags)
    try:
        with llama_server_here(models["stories260K"], tmp_path / "llama-server.txt", *flags) as url:
            for body in ({"input": TEXTS}, {"content": TEXTS[0]}, {"input": [[1, 2, 3]]}):
                ours = httpx.post(srv.url + "/embeddings", json=body, timeout=60).json()
                theirs = httpx.post(url + "/embeddings", json=body, timeout=60).json()
                assert [{k: v for k, v in o.items() if k != "embedding"} for o in ours] == \
                    [{k: v for k, v in t.items() if k != "embedding"} for t in theirs]
                for o, t in zip(ours, theirs):
                    assert np.shape(o["embedding"]) == np.shape(t["embedding"])
                    assert np.abs(np.array(o["embedding"]) - np.array(t["embedding"])).max() < TOL
    finally:
        _stop(srv)


@pytest.mark.parametrize("body, status, what", [
    ({"input": []}, 400, "must not be empty"),
    ({"input": [[]]}, 400, "cannot be empty"),
    ({"input": [[1, 512]]}, 400, "outside the vocabulary"),
    ({"input": [-1, 2]}, 400, "outside the vocabulary"),
    ({"input": list(range(1, 66))}, 400, "larger than the max context size"),
    ({"input": " ".join(["Lily"] * 80)}, 400, "larger than the max context size"),
    ({"input": "Lily", "encoding_format": "hex"}, 400, "encoding_format"),
    ({"input": {"text": "Lily"}}, 400, "input"),
])
def test_bad_input_is_a_400(server, body, status, what):
    r = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert what in error["message"]
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0).embeddings.create(
            model="any", **body)


@pytest.mark.parametrize("flags, status, kind, message", [
    ((), 501, "not_supported_error", "does not support embeddings"),
    (("--embedding", "--pooling", "none"), 400, "invalid_request_error", "Pooling type 'none' is not OAI compatible"),
])
def test_refusals_as_llama_server(models, tmp_path, flags, status, kind, message):
    srv = _serve(models["stories260K"], tmp_path / "stderr.txt", "-c", 64, *flags)
    try:
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": "Lily"}, timeout=60)
        assert r.status_code == status and r.json()["error"]["type"] == kind and message in r.json()["error"]["message"]
    finally:
        _stop(srv)


def test_damaged_model_is_a_500(models, tmp_path):
    """output_norm.weight all NaN: every hidden state is NaN, the server's fault (500, model_damaged), as for logits."""
    path = tmp_path / "damaged.gguf"
    with GGUFFile(models["stories260K"]) as g:
        entry = next(e for e in g.tensors if e.info.name == "output_norm.weight")
    path.write_bytes(models["stories260K"].read_bytes())
    with open(path, "r+b") as f:
        f.seek(entry.offset)
        f.write(np.full(entry.info.nbytes // 4, np.nan, np.float32).tobytes())
    srv = _serve(path, tmp_path / "stderr.txt", "-c", 64, "--embedding", "--pooling", "last")
    try:
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": "Lily"}, timeout=60)
        assert r.status_code == 500 and r.json()["error"]["code"] == "model_damaged", r.text
        assert "NaN or infinite hidden state" in r.json()["error"]["message"]
    finally:
        _stop(srv)


# -- llama.cpp b11434's llama-server (bench-data; not in CI) --------------------------------------------------------

def llama_server_here(path, log, *flags):
    """llama-server with -c 64, one slot, f32 caches and flash attention off (as llama-cpp-python), plus `flags`."""
    return running_llama_server(path, log, "-c", "64", "-np", "1", "-t", "1", "-ctk", "f32", "-ctv", "f32",
                                "-fa", "off", *flags)


@pytest.fixture(scope="module")
def llama_server(models, tmp_path_factory):
    with llama_server_here(models["stories260K"], tmp_path_factory.mktemp("llama-server") / "log.txt",
                              "--embedding", "--pooling", "mean") as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, {"embd_normalize": -1}, {"embd_normalize": 0}, {"embd_normalize": 1},
                                   {"embd_normalize": 3}, {"encoding_format": "base64"}])
def test_answers_equal_llama_servers(server, llama_server, extra):
    body = {"input": TEXTS, "model": "m", **extra}
    ours = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60).json()
    theirs = httpx.post(llama_server + "/v1/embeddings", json=body, timeout=60).json()
    strip = lambda r: {k: v for k, v in r.items() if k != "data"}  # noqa: E731
    assert strip(ours) == strip(theirs)
    assert [{k: v for k, v in d.items() if k != "embedding"} for d in ours["data"]] == \
        [{k: v for k, v in d.items() if k != "embedding"} for d in theirs["data"]]
    for o, t in zip(ours["data"], theirs["data"]):
        o, t = o["embedding"], t["embedding"]
        if isinstance(t, str):
            o, t = from_base64(o), from_base64(t)
        scale = max(1.0, float(np.abs(np.array(t)).max()))  # max-abs normalization scales to the int16 range
        assert np.abs(np.array(o) - np.array(t)).max() < TOL * scale, json.dumps(extra)
