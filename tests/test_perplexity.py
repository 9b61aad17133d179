"""`toolkit perplexity` and runtime.perplexity against llama.cpp: the chunking, the compact base-logits file, the
statistics; then the real stories260K model (F32, Q8_0, Q4_K_M) against (a) llama.cpp's own logits through
llama-cpp-python scored by a plain implementation here, and (b) llama.cpp b11434's llama-perplexity binary when
bench-data has it (perplexity, both directions of the base-logits file, KL divergence)."""
from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile

import numpy as np
import pytest

from common.errors import UserError
from runtime import perplexity as P
from tests.helpers import REPO, quantized, run_toolkit

LLAMA_PERPLEXITY = REPO / "bench-data" / "llama.cpp" / "bin" / "llama-perplexity"
N_CTX = 128
TYPES = ["F32", "Q8_0", "Q4_K_M"]

STORY = """Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her red \
ball. One day, she saw a big dog under a tree. The dog was sad because he could not find his bone.
Lily wanted to help the dog. She said, "Don't be sad, dog. I will help you find your bone." The dog wagged his tail \
and licked her hand. They looked under the slide, behind the swings and near the pond. At last, Lily saw something \
white in the grass. It was the bone! The dog was so happy. He jumped and barked and ran around Lily. Lily laughed and \
gave him a big hug. From that day on, Lily and the dog were best friends, and they played in the park every day.
One day, a little boy named Tim went to the beach with his mom. The sun was hot and the sand was soft. Tim wanted to \
build a big sand castle. He took his blue bucket and his small shovel and started to dig. His mom helped him carry \
water from the sea.
Soon the castle was very tall. Tim put a shell on the top and a stick for a flag. He was very proud. But then a big \
wave came and hit the castle. The castle fell down and Tim began to cry. His mom gave him a hug and said, "It is \
okay, Tim. We can build a new one together." Tim smiled and they built an even bigger castle. It was the best day ever.
Once there was a small cat named Mittens. Mittens liked to sleep in the warm sun by the window. One morning, she heard \
a bird sing outside. She wanted to play with the bird, so she jumped out of the window and ran into the garden.
The bird flew up into a tall tree. Mittens tried to climb the tree, but it was too high. She was scared and she could \
not get down. She said, "Meow, meow! Help me!" A kind girl named Sue heard her. Sue got a ladder and climbed up to get \
Mittens. She held the cat gently and brought her down. Mittens purred and rubbed her head on Sue's arm. Sue took \
Mittens home and gave her some milk. Mittens learned that it is better to stay safe and not to climb trees that are \
too tall.
Ben had a toy car that he loved very much. It was shiny and fast. Every day he played with it on the floor of his \
room. One day his friend Sam came to visit. Sam wanted to play with the car too, but Ben did not want to share. Sam \
felt sad and went to sit on the bed.
Ben's mom saw what happened. She said, "Ben, sharing is nice. When you share, you and your friend can both be happy." \
Ben thought about it. He gave the car to Sam and said, "You can play with it now." Sam smiled a big smile. Then they \
built a road with blocks and took turns driving the car. They had so much fun together. Ben learned that sharing \
makes playing more fun.
"""


# -- pieces, no model -----------------------------------------------------------------------------------------------

def test_chunking_is_llama_perplexity_s():
    c = P.plan_chunks(1200, 128)
    assert (c.n_chunk, c.first, c.n_scored) == (9, 64, 63)
    assert P.plan_chunks(1200, 128, max_chunks=4).n_chunk == 4
    assert P.plan_chunks(1200, 128, max_chunks=40).n_chunk == 9
    assert P.plan_chunks(1024, 512).n_chunk == 2
    tokens = list(range(1200))
    chunk = c.chunk(tokens, 2)
    assert chunk == list(range(256, 384)) and list(c.targets(chunk)) == list(range(256 + 65, 384))
    with pytest.raises(UserError, match="at least 1024 tokens"):
        P.plan_chunks(1023, 512)
    with pytest.raises(UserError, match="-c must be at least 4"):
        P.plan_chunks(100, 3)


def _log_softmax64(logits):
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def test_token_nll_and_compact_rows():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((7, 301)) * 6).astype(np.float32)   # odd vocabulary: a padding value per row
    targets = rng.integers(0, 301, 7)
    exact = -_log_softmax64(logits)[np.arange(7), targets]
    assert np.allclose(P.token_nll(logits, targets), exact, rtol=0, atol=1e-5)
    rows, nll = P.compact_log_probs(logits, targets)
    assert rows.shape == (7, P.row_width(301)) == (7, 306) and rows.dtype == np.uint16
    assert (rows[:, -1] == 0).all()
    assert np.allclose(nll, exact, atol=1e-5)
    lp, got = _log_softmax64(logits), P.expand_log_probs(rows, 301)
    top = lp.max(axis=1, keepdims=True)
    kept = lp > top - 16
    step = 16 / 65535
    assert np.abs(got - lp)[kept].max() <= step       # rounding to the nearest of 65536 levels over 16 nats
    assert (got[~kept] <= (top - 16 + step).repeat(301, axis=1)[~kept]).all()
    flat = np.zeros((1, 8), dtype=np.float32)          # scale 0: every value stored as 0
    rows, nll = P.compact_log_probs(flat, np.array([3]))
    assert (rows[0, 4:] == 0).all() and math.isclose(nll[0], math.log(8), rel_tol=1e-6)


def test_kl_divergence_per_token_numbers():
    rng = np.random.default_rng(2)
    base = (rng.standard_normal((5, 64)) * 3).astype(np.float32)
    model = base + (rng.standard_normal((5, 64)) * 0.3).astype(np.float32)
    targets = rng.integers(0, 64, 5)
    rows, _ = P.compact_log_probs(base, targets)
    c = P.compare_with_base(model, rows, targets)
    lp_base, lp = _log_softmax64(base), _log_softmax64(model)
    kld = (np.exp(lp_base) * (lp_base - lp)).sum(axis=1)
    assert np.allclose(c.kld, kld, atol=1e-4) and (kld > 0).all()
    i = np.arange(5)
    assert np.allclose(c.p_diff, np.exp(lp[i, targets]) - np.exp(lp_base[i, targets]), atol=1e-4)
    assert list(c.same_top) == list(base.argmax(1) == model.argmax(1))
    same = P.compare_with_base(base, rows, targets)
    assert np.abs(same.kld).max() < 16 / 65535 and same.same_top.all()   # the uint16 rounding alone


def test_statistics_and_their_lines():
    s = P.PerplexityStats()
    s.add(np.array([1.0, 2.0, 3.0]))
    assert math.isclose(s.ppl, math.exp(2.0))
    assert math.isclose(s.uncertainty, math.sqrt((14 / 3 - 4) / 2) * math.exp(2.0))
    assert P.chunk_estimate(3, s) == f"[3]{math.exp(2.0):.4f},"
    assert P.final_estimate(s) == f"Final estimate: PPL = {math.exp(2.0):.4f} +/- {s.uncertainty:.5f}"
    values = np.arange(11, dtype=np.float32)
    assert P.percentile(values, 0.95) == pytest.approx(9.5) and P.percentile(values, 0.0) == 0.0
    assert P.median(values) == 5.0 and P.median(values[:10]) == 4.5
    assert P.mean_and_uncertainty(30.0, 100.0, 10) == (3.0, 0.0)    # no uncertainty up to 10 values


def test_base_file_round_trip_and_damage(tmp_path):
    chunks, n_vocab = P.Chunks(8, 3), 5
    tokens = list(range(30))
    rng = np.random.default_rng(3)
    rows = [rng.integers(0, 65535, (chunks.n_scored, P.row_width(n_vocab))).astype(np.uint16) for _ in range(3)]
    path = tmp_path / "base.kld"
    with P.BaseLogitsWriter(path, chunks, n_vocab, tokens) as w:
        for r in rows:
            w.write_chunk(r)
    assert os.listdir(tmp_path) == ["base.kld"]
    data = path.read_bytes()
    assert data[:8] == b"_logits_" and np.frombuffer(data[8:20], "<i4").tolist() == [8, 5, 3]
    assert len(data) == 20 + 4 * 24 + 2 * 3 * 3 * 10
    b = P.BaseLogits.open(path)
    assert (b.chunks, b.n_vocab, b.tokens.tolist()) == (chunks, 5, tokens[:24])
    assert all((b.rows[i] == rows[i]).all() for i in range(3))
    (tmp_path / "short.kld").write_bytes(data[:-1])
    with pytest.raises(UserError, match="truncated or damaged"):
        P.BaseLogits.open(tmp_path / "short.kld")
    (tmp_path / "other.kld").write_bytes(b"GGUF" + data[4:])
    with pytest.raises(UserError, match="does not look like"):
        P.BaseLogits.open(tmp_path / "other.kld")
    with pytest.raises(RuntimeError):
        with P.BaseLogitsWriter(tmp_path / "never.kld", chunks, n_vocab, tokens):
            raise RuntimeError("interrupted")
    assert not [n for n in os.listdir(tmp_path) if "never" in n]


# -- stories260K ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory, shared_fixtures):
    from converter.convert import convert_model
    root = tmp_path_factory.mktemp("ppl")
    f32 = root / "F32.gguf"
    convert_model(shared_fixtures / "stories260K", outtype="f32", outfile=f32)
    out = {t: quantized(f32, root, t) for t in TYPES}
    out["text"] = root / "story.txt"
    out["text"].write_text(STORY, encoding="utf-8")
    return out


def ours(path, cache_type="f16", n_ctx=N_CTX, save=None):
    """Our running estimates and final PPL over STORY through the library."""
    from runtime.generate import Session
    session = Session(str(path), n_ctx=n_ctx, n_batch=512, n_threads=2, cache_type=cache_type)
    try:
        tokens = P.tokenize_text(session.tokenizer, STORY)
        chunks = P.plan_chunks(len(tokens), n_ctx)
        running = []
        stats = P.perplexity(session, tokens, chunks, save, on_chunk=lambda d, s: running.append(s.ppl))
        return tokens, running, stats
    finally:
        session.close()


def llama_cpp_ppl(llama_cpp, path, cache_type):
    """The same method, written plainly, over llama.cpp's logits: tokenize with BOS, chunks of N_CTX from an empty
    context with BOS first, -log softmax in float64 over the second half of each; running and final PPL."""
    kv = {"f16": 1, "f32": 0}[cache_type]
    llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_batch=N_CTX, logits_all=True, verbose=False, n_threads=2,
                          type_k=kv, type_v=kv)
    tokens = llm.tokenize(STORY.encode(), add_bos=True, special=False)
    nlls, running = [], []
    for i in range(len(tokens) // N_CTX):
        chunk = list(tokens[i * N_CTX:(i + 1) * N_CTX])
        chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[:N_CTX], dtype=np.float64)
        for j in range(N_CTX // 2, N_CTX - 1):
            row = logits[j]
            top = row.max()
            nlls.append(top + math.log(np.exp(row - top).sum()) - row[tokens[i * N_CTX + j + 1]])
        running.append(math.exp(sum(nlls) / len(nlls)))
    return list(tokens), running


@pytest.mark.slow
@pytest.mark.parametrize("type_name,cache_type", [("F32", "f16"), ("F32", "f32"), ("Q8_0", "f32"), ("Q4_K_M", "f32")])
def test_perplexity_matches_llama_cpp_logits(models, type_name, cache_type):
    """Every running estimate and the final PPL within 1e-3 of llama.cpp's (measured: 7e-5 at most). The quantized
    files are compared with f32 KV caches on both sides: with f16 caches the runtime's attention rounds differently
    from llama.cpp's and, on this 64-wide model, that alone moves the first chunk's estimate by up to 6e-3 and the
    final PPL by up to 2.3e-3 (Q4_K_M) -- the runtime's difference, not this method's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    tokens, running, stats = ours(models[type_name], cache_type)
    ref_tokens, ref_running = llama_cpp_ppl(llama_cpp, models[type_name], cache_type)
    assert tokens == ref_tokens and len(running) == len(ref_running) == 9
    assert np.allclose(running, ref_running, rtol=1e-3, atol=0)
    assert stats.count == 9 * 63


@pytest.mark.parametrize("n_batch", [N_CTX, 48])
def test_scored_logits_alone_are_those_rows_of_all_logits(models, n_batch):
    """chunk_logits asks for the rows from `first` on only, as llama-perplexity's output flags do: the bits of those
    rows of every token's logits, with the chunk in one batch and across batches (one wholly before `first`)."""
    from runtime.generate import Session
    session = Session(str(models["Q4_K_M"]), n_ctx=N_CTX, n_batch=n_batch, n_threads=2)
    try:
        chunk = P.tokenize_text(session.tokenizer, STORY)[:N_CTX]
        first = N_CTX // 2 + 3
        scored = P.chunk_logits(session, chunk, None, first)
        session.reset()
        every = session.eval(chunk, all_logits=True)
        assert scored.shape == (N_CTX - 1 - first, session.model.hp.n_vocab)
        assert np.array_equal(scored, every[first:N_CTX - 1])
        with pytest.raises(ValueError):
            session.eval(chunk[:4], all_logits=True, skip_logits=4)
    finally:
        session.close()


def test_chunks_in_one_pass_score_as_one_at_a_time(models):
    """-b 4 x -c: four chunks per pass, each in a slot of its own (llama-perplexity's n_seq), the last pass short: the
    same per-chunk figures, bit for bit, as one chunk per pass."""
    from runtime.generate import Session
    figures = []
    for n_batch in (N_CTX, 4 * N_CTX):
        session = Session(str(models["Q4_K_M"]), n_ctx=N_CTX, n_batch=n_batch, n_threads=2)
        try:
            tokens = P.tokenize_text(session.tokenizer, STORY)
            chunks = P.plan_chunks(len(tokens), N_CTX)
            done = []
            P.perplexity(session, tokens, chunks, on_chunk=lambda d, s: done.append((d.index, d.per_pass, s.nll)))
            figures.append(done)
        finally:
            session.close()
    assert [d[1] for d in figures[1]] == [4] * 8 + [1] and [d[1] for d in figures[0]] == [1] * 9
    assert [(i, nll) for i, _, nll in figures[0]] == [(i, nll) for i, _, nll in figures[1]]


def test_kl_divergence_of_a_model_against_itself_is_zero(models, tmp_path):
    from runtime.generate import Session
    base = tmp_path / "base.kld"
    session = Session(str(models["F32"]), n_ctx=N_CTX, n_threads=2)
    tokens = P.tokenize_text(session.tokenizer, STORY)
    chunks = P.plan_chunks(len(tokens), N_CTX)
    with P.BaseLogitsWriter(base, chunks, session.model.hp.n_vocab, tokens) as writer:
        stats = P.perplexity(session, tokens, chunks, writer)
    kld = P.kl_divergence(session, P.BaseLogits.open(base))
    assert kld.count == stats.count == 9 * 63
    assert abs(kld.kld()[0]) < 1e-6 and float(np.max(np.abs(kld.sorted_kld()))) < 1e-4
    assert kld.same_top()[0] == 1.0
    assert math.isclose(kld.ppl()[0], stats.ppl, rel_tol=1e-6)
    assert math.isclose(kld.ppl_base()[0], stats.ppl, rel_tol=1e-4)   # the target's log-prob read back from uint16
    lines = P.kld_summary(kld)
    assert "Mean    KLD:   0.000000 ±   0.000001" in lines or "Mean    KLD:  -0.000000 ±   0.000001" in lines
    assert lines[-1] == "Same top p: 100.000 ± 0.000 %"


def test_command_line_errors_are_one_line(models, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time, there was a cat.", encoding="utf-8")
    for args, message in (
            (["-f", short], "you need at least 1024 tokens to evaluate perplexity with a context of 512"),
            (["--kl-divergence"], "--kl-divergence needs --kl-divergence-base FILE"),
            ([], "give the text to score with -f FILE"),
            (["-f", models["text"], "-c", "2"], "-c must be at least 4"),
            (["--kl-divergence", "--kl-divergence-base", models["text"]], "does not look like a file of base")):
        p = run_toolkit("perplexity", "-m", models["F32"], *args)
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr.strip().splitlines()[-1].startswith("error: ") and message in p.stderr


def _section(output: str, title: str = "====== Perplexity statistics ======") -> list[str]:
    """The lines from `title` to the end of the KL-divergence summary."""
    lines = output.splitlines()
    start = lines.index(title)
    end = next(i for i, line in enumerate(lines) if line.startswith("Same top p:"))
    return lines[start:end + 1]


def test_quantize_report_is_perplexity_run_twice_by_hand(models, tmp_path):
    """toolkit quantize --report prints what toolkit perplexity prints run by hand on the same files: the input's
    final estimate (with --kl-divergence-base), then the output's statistics against it (--kl-divergence), the same
    lines to the last digit; the base file it needs lives in a temporary folder that is gone afterwards."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out, base = tmp_path / "Q8_0.gguf", tmp_path / "base.kld"
    p = run_toolkit("quantize", models["F32"], out, "Q8_0", "2", "--report", "--report-file", models["text"],
                    "--report-ctx", N_CTX, "--report-chunks", "-1", env={"TMPDIR": str(tmp)})
    assert p.returncode == 0, p.stderr
    assert "quant size" in p.stderr and os.listdir(tmp) == []
    report = p.stdout.splitlines()
    assert report[1] == f"====== quality report: Q8_0.gguf against F32.gguf, story.txt: 9 chunks of {N_CTX} tokens ======"
    first = toolkit_perplexity("-m", models["F32"], "-f", models["text"], "--kl-divergence-base", base)
    assert report[2] == "input:  " + re.search(r"^Final estimate: .*$", first, re.M).group(0)
    second = toolkit_perplexity("-m", out, "--kl-divergence-base", base, "--kl-divergence")
    assert _section(p.stdout) == _section(second)
    assert 1e-4 < figure(p.stdout, "Mean    KLD") < 5e-3 and figure(p.stdout, "Same top p") > 90


def test_quantize_report_checks_its_text_before_quantizing(models, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time, there was a cat.", encoding="utf-8")
    out = tmp_path / "out.gguf"
    for args, message in ((["--report"], "--report needs the text to score: --report-file FILE"),
                          (["--report-file", short], "--report-file is read only with --report"),
                          (["--report", "--report-file", short], "you need at least 1024 tokens")):
        p = run_toolkit("quantize", models["F32"], out, "Q8_0", *args)
        assert p.returncode == 1 and message in p.stderr.strip().splitlines()[-1] and not out.exists()


# -- llama.cpp b11434's llama-perplexity (bench-data; not in CI) -----------------------------------------------------

def needs_binary():
    if not LLAMA_PERPLEXITY.is_file():
        pytest.skip(f"{LLAMA_PERPLEXITY} is absent (build it with ../shared/tools/build-llama-cpp.sh)")


def llama_perplexity(*args) -> str:
    """The binary's stdout and stderr together (it prints the estimates on stdout, the final line on stderr). Its
    logger is a thread that the program leaves unjoined at exit (llama.cpp #22142): writing into pipes on a busy
    machine, its last lines were lost in most runs (the last chunk and every figure after it), writing into a file
    in none, so the output goes to a file; a run whose last figure (KLD mode's `Same top p`, else `Final estimate`)
    is missing all the same is run again, three times at most."""
    last = "Same top p:" if "--kl-divergence" in args else "Final estimate:"
    for _ in range(3):
        with tempfile.TemporaryFile("w+") as out:
            p = subprocess.run([str(LLAMA_PERPLEXITY), "-c", str(N_CTX), "-b", str(N_CTX), "-t", "2",
                                *map(str, args)], stdout=out, stderr=subprocess.STDOUT, text=True, timeout=300)
            out.seek(0)
            output = out.read()
        assert p.returncode == 0, output[-2000:]
        if last in output:
            break
    return output


def toolkit_perplexity(*args) -> str:
    p = run_toolkit("perplexity", "-c", N_CTX, "-b", N_CTX, "-t", "2", *args)
    assert p.returncode == 0, p.stderr
    return p.stdout


def estimates(output: str) -> tuple[list[float], float]:
    running = [float(v) for v in re.findall(r"\[\d+\](\d+\.\d+),", output)]
    return running, float(re.search(r"Final estimate: PPL = (\d+\.\d+) \+/- ", output).group(1))


def figure(output: str, name: str) -> float:
    return float(re.search(re.escape(name) + r"\s*:\s*(-?\d+\.\d+)", output).group(1))


@pytest.mark.slow
@pytest.mark.parametrize("type_name,tol", [("F32", 1e-3), ("Q8_0", 1e-3), ("Q4_K_M", 2.5e-3)])
def test_perplexity_matches_llama_perplexity(models, type_name, tol):
    """Same file, same text, -c 128, one chunk per batch on both sides. F32: every running estimate within 1e-3
    (measured 4e-4 at most). Quantized files: the final PPL (measured Q8_0 1e-4, Q4_K_M 9e-4); llama.cpp's own Q4_K_M
    figure on this model moves over 2e-3 with its batch and flash-attention settings (3.8308 at -b 128, 3.8342 at
    -b 2048, 3.8380 with -fa off), hence Q4_K_M's wider bound."""
    needs_binary()
    ours_running, ours_final = estimates(toolkit_perplexity("-m", models[type_name], "-f", models["text"]))
    theirs_running, theirs_final = estimates(llama_perplexity("-m", models[type_name], "-f", models["text"]))
    assert len(ours_running) == len(theirs_running) == 9
    assert math.isclose(ours_final, theirs_final, rel_tol=tol)
    if type_name == "F32":
        assert np.allclose(ours_running, theirs_running, rtol=1e-3, atol=0)


@pytest.mark.slow
def test_base_logits_files_are_interchangeable_with_llama_perplexity(models, tmp_path):
    """Each side reads the other's base-logits file: the same header and tokens; the F32 model against either file
    gives a KL divergence of ~0 and the file's own PPL as PPL(base); Q4_K_M against llama.cpp's file gives
    llama-perplexity's mean KLD within 2% (measured 0.4%)."""
    needs_binary()
    ours_file, theirs_file = tmp_path / "ours.kld", tmp_path / "theirs.kld"
    _, ours_ppl = estimates(toolkit_perplexity("-m", models["F32"], "-f", models["text"],
                                               "--kl-divergence-base", ours_file))
    _, theirs_ppl = estimates(llama_perplexity("-m", models["F32"], "-f", models["text"],
                                               "--kl-divergence-base", theirs_file))
    head = 8 + 12 + 4 * 9 * N_CTX
    a, b = ours_file.read_bytes(), theirs_file.read_bytes()
    assert len(a) == len(b) == head + 2 * 9 * 63 * P.row_width(512) and a[:head] == b[:head]
    rows_a, rows_b = P.BaseLogits.open(ours_file).rows, P.BaseLogits.open(theirs_file).rows
    assert np.abs(P.expand_log_probs(rows_a.reshape(-1, rows_a.shape[-1]), 512)
                  - P.expand_log_probs(rows_b.reshape(-1, rows_b.shape[-1]), 512)).max() < 0.05

    theirs_reading_ours = llama_perplexity("-m", models["F32"], "--kl-divergence-base", ours_file, "--kl-divergence")
    ours_reading_theirs = toolkit_perplexity("-m", models["F32"], "--kl-divergence-base", theirs_file,
                                             "--kl-divergence")
    for out, base_ppl in ((theirs_reading_ours, ours_ppl), (ours_reading_theirs, theirs_ppl)):
        assert abs(figure(out, "Mean    KLD")) < 1e-4 and figure(out, "Maximum KLD") < 1e-2
        assert figure(out, "Same top p") == 100.0
        assert math.isclose(figure(out, "Mean PPL(base)"), base_ppl, rel_tol=1e-4)

    ours_q = toolkit_perplexity("-m", models["Q4_K_M"], "--kl-divergence-base", theirs_file, "--kl-divergence")
    theirs_q = llama_perplexity("-m", models["Q4_K_M"], "--kl-divergence-base", theirs_file, "--kl-divergence")
    assert figure(ours_q, "Mean    KLD") > 5e-3
    assert math.isclose(figure(ours_q, "Mean    KLD"), figure(theirs_q, "Mean    KLD"), rel_tol=0.02)
    assert math.isclose(figure(ours_q, "Same top p"), figure(theirs_q, "Same top p"), abs_tol=1.0)
    names = [line.split(":")[0].strip() for line in theirs_q.splitlines() if re.match(r"^(Mean|Maximum|Minimum|Median|"
             r"RMS|Same|Cor|\s?\d+\.\d%)", line)]
    assert len(names) == 34
    assert names == [line.split(":")[0].strip() for line in ours_q.splitlines() if line.split(":")[0].strip() in names]
