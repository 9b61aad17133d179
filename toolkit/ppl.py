"""`toolkit perplexity`'s two runs, `toolkit imatrix` and `toolkit quantize --report` on the terminal: the figures on stdout in llama-perplexity's format (the running
estimates, the final estimate, the KL-divergence table and statistics), progress and information on stderr."""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from runtime import perplexity as P
from toolkit.ui import ChunkProgress, console


def _info(message: str) -> None:
    console.print(message, markup=False, soft_wrap=True, highlight=False)


class _Output:
    """Pieces of stdout written as they come, unless stdout is the terminal the progress bar is drawn on: then kept
    until the bar is gone."""

    def __init__(self, progress: ChunkProgress):
        self.hold = progress.live and sys.stdout.isatty()
        self.held: list[str] = []

    def write(self, text: str) -> None:
        if self.hold:
            self.held.append(text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def release(self) -> None:
        sys.stdout.write("".join(self.held))
        sys.stdout.flush()
        self.held = []


N_UBATCH = 512   # llama.cpp's default micro-batch (-ub): the tokens of one pass, which -b's batch is split into


def _open_session(model: Path, n_ctx: int, n_batch: int, threads: int | None, cache_type: str):
    """A session of n_ctx whose passes take as many whole chunks as both -b and llama.cpp's micro-batch hold (its
    n_seq chunks per batch run as passes of 512 tokens: 4 chunks of -c 128, one of -c 512), at least one; or one
    chunk in pieces of -b when -b is below n_ctx."""
    from runtime.generate import Session
    if not Path(model).is_file():
        raise UserError(f"model file {model} does not exist")
    batch = max(1, min(n_batch, N_UBATCH) // n_ctx) * n_ctx if 0 < n_ctx <= n_batch else n_batch
    session = Session(str(model), n_ctx=n_ctx, n_batch=batch, n_threads=threads, cache_type=cache_type)
    hp = session.model.hp
    _info(f"perplexity: {Path(model).name}: {hp.arch}, n_vocab = {hp.n_vocab}, n_ctx_train = {hp.n_ctx_train}, "
          f"n_threads = {session.n_threads}")
    if n_ctx > hp.n_ctx_train:
        _info(f"warning: model was trained on only {hp.n_ctx_train} context tokens ({n_ctx} specified)")
    return session


def _read_text(text_file: Path) -> str:
    if not Path(text_file).is_file():
        raise UserError(f"text file {text_file} does not exist")
    return Path(text_file).read_text(encoding="utf-8", errors="replace")


def _text_chunks(session, text: str, n_ctx: int, max_chunks: int, tool: str):
    """The text's tokens and llama-perplexity's chunks of them."""
    _info(f"{tool}: tokenizing the input ..")
    tokens = P.tokenize_text(session.tokenizer, text)
    return tokens, P.plan_chunks(len(tokens), n_ctx, max_chunks)


def _timings(session) -> None:
    """llama.cpp's context timings (the sampler's line says nothing here)."""
    _info("\n".join(line for line in session.timings.report().splitlines() if "sampler" not in line))


def _first_chunk_note(done: P.ChunkDone) -> None:
    if done.index == 1:
        eta = done.seconds * done.n_chunk / done.per_pass / 60
        _info(f"perplexity: {done.seconds:.2f} seconds per pass - ETA {eta:.2f} minutes")


def _run_chunks(description: str, n_chunk: int, run, line, note):
    """Run `run(on_chunk)` under a progress bar; each chunk's `line(done, stats)` goes to stdout."""
    progress = ChunkProgress(description, n_chunk)
    out = _Output(progress)

    def on_chunk(done, stats):
        _first_chunk_note(done)
        out.write(line(done, stats))
        progress.advance(note(stats))
    try:
        return run(on_chunk), out
    finally:
        progress.finish()
        out.release()


def perplexity(model: Path, text_file: Path, n_ctx: int, n_batch: int, threads: int | None, max_chunks: int,
               cache_type: str, save_base: Path | None) -> None:
    text = _read_text(text_file)
    session = _open_session(model, n_ctx, n_batch, threads, cache_type)
    try:
        tokens, chunks = _text_chunks(session, text, n_ctx, max_chunks, "perplexity")
        _info(f"perplexity: calculating perplexity over {chunks.n_chunk} chunks, n_ctx={n_ctx}, "
              f"batch_size={session.n_batch} ({len(tokens)} tokens)")
        writer = None
        if save_base is not None:
            writer = P.BaseLogitsWriter(save_base, chunks, session.model.hp.n_vocab, tokens)
            _info(f"perplexity: saving the scored log-probabilities to {save_base}")
        try:
            stats, out = _run_chunks("perplexity", chunks.n_chunk,
                                     lambda cb: P.perplexity(session, tokens, chunks, writer, cb),
                                     lambda d, s: P.chunk_estimate(d.index, s), lambda s: f"PPL {s.ppl:.4f}")
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        if writer is not None:
            writer.commit()
        print()
        print(P.final_estimate(stats))
        _timings(session)
    finally:
        session.close()


def kl_divergence(model: Path, base_file: Path, n_ctx: int | None, n_batch: int, threads: int | None,
                  max_chunks: int, cache_type: str) -> None:
    base = P.BaseLogits.open(base_file)
    if n_ctx is not None and n_ctx != base.chunks.n_ctx:
        raise UserError(f"{base_file} was computed with -c {base.chunks.n_ctx}; drop -c or give -c "
                        f"{base.chunks.n_ctx}")
    session = _open_session(model, base.chunks.n_ctx, n_batch, threads, cache_type)
    try:
        P.check_base_matches(base, session.model.hp.n_vocab)
        n_chunk = min(max_chunks, base.chunks.n_chunk) if max_chunks > 0 else base.chunks.n_chunk
        _info(f"kl_divergence: computing over {n_chunk} chunks, n_ctx={base.chunks.n_ctx}, "
              f"batch_size={session.n_batch}")
        print(P.KLD_HEADER, flush=True)
        stats, _ = _run_chunks("KL divergence", n_chunk,
                               lambda cb: P.kl_divergence(session, base, max_chunks, cb),
                               lambda d, s: P.kld_chunk_row(d.index, s) + "\n",
                               lambda s: f"KLD {s.kld()[0]:.5f}")
        print()
        summary = P.kld_summary(stats)
        if summary:
            print("\n".join(summary))
        else:
            _info(f"kl_divergence: {stats.count} tokens scored; no summary statistics under {P.MIN_KLD_SUMMARY}")
        _timings(session)
    finally:
        session.close()


def imatrix(model: Path, text_file: Path, out: Path, n_ctx: int, n_batch: int, threads: int | None, max_chunks: int,
            cache_type: str) -> None:
    """llama-imatrix: the importance matrix over the text's chunks, the perplexity estimates printed on the way,
    written to `out` in its GGUF layout."""
    from quantizer.imatrix import save
    from runtime.imatrix import compute
    text = _read_text(text_file)
    session = _open_session(model, n_ctx, n_batch, threads, cache_type)
    try:
        tokens, chunks = _text_chunks(session, text, n_ctx, max_chunks, "imatrix")
        _info(f"imatrix: computing over {chunks.n_chunk} chunks, n_ctx={n_ctx}, batch_size={session.n_batch} "
              f"({len(tokens)} tokens)")
        (entries, stats), _ = _run_chunks("imatrix", chunks.n_chunk, lambda cb: compute(session, tokens, chunks, cb),
                                          lambda d, s: P.chunk_estimate(d.index, s), lambda s: f"PPL {s.ppl:.4f}")
        save(out, entries, [str(text_file)], chunks.n_chunk, n_ctx)
        print()
        print(P.final_estimate(stats))
        _info(f"imatrix: stored {len(entries)} matrices' statistics in {out}")
        _timings(session)
    finally:
        session.close()


# -- toolkit quantize --report ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReportPlan:
    """The text of a quantization report, tokenized with the input model's tokenizer and cut into chunks (checked
    before quantizing, so that a text too short fails at once)."""
    text_file: Path
    tokens: list[int]
    chunks: P.Chunks


def report_plan(model: Path, text_file: Path, n_ctx: int, max_chunks: int) -> ReportPlan:
    """Tokenize the report's text with the model file's tokenizer alone (no weights loaded) and plan its chunks."""
    from common.ggufio import GGUFFile
    from runtime.tokenizer import Tokenizer
    text = _read_text(text_file)
    if not Path(model).is_file():
        raise UserError(f"model file {model} does not exist")
    with GGUFFile(model) as g:
        tokenizer = Tokenizer.from_gguf(g)
    tokens = P.tokenize_text(tokenizer, text)
    return ReportPlan(Path(text_file), tokens, P.plan_chunks(len(tokens), n_ctx, max_chunks))


def quality_report(source: Path, result: Path, plan: ReportPlan, n_batch: int, threads: int | None,
                   cache_type: str) -> None:
    """The quantized file's quality against its input over the plan's chunks, as `toolkit perplexity` computes it run
    twice by hand (the input with --kl-divergence-base, then the result with --kl-divergence): the input's
    perplexity, then the KL-divergence statistics. The base log-probabilities go to a temporary folder, removed
    whatever happens."""
    chunks = plan.chunks
    with tempfile.TemporaryDirectory(prefix="toolkit-report-") as tmp:
        session = _open_session(source, chunks.n_ctx, n_batch, threads, cache_type)
        try:
            with P.BaseLogitsWriter(Path(tmp) / "base.kld", chunks, session.model.hp.n_vocab, plan.tokens) as writer:
                base_stats, _ = _run_chunks("perplexity of the input", chunks.n_chunk,
                                            lambda cb: P.perplexity(session, plan.tokens, chunks, writer, cb),
                                            lambda d, s: "", lambda s: f"PPL {s.ppl:.4f}")
        finally:
            session.close()
        base = P.BaseLogits.open(Path(tmp) / "base.kld")
        session = _open_session(result, chunks.n_ctx, n_batch, threads, cache_type)
        try:
            stats, _ = _run_chunks("KL divergence of the output", chunks.n_chunk,
                                   lambda cb: P.kl_divergence(session, base, -1, cb),
                                   lambda d, s: "", lambda s: f"KLD {s.kld()[0]:.5f}")
        finally:
            session.close()
    print()
    print(f"====== quality report: {Path(result).name} against {Path(source).name}, {plan.text_file.name}: "
          f"{chunks.n_chunk} chunks of {chunks.n_ctx} tokens ======")
    print(f"input:  {P.final_estimate(base_stats)}")
    ppl, dppl = stats.ppl()
    print(f"output: Final estimate: PPL = {ppl:.4f} +/- {dppl:.5f}")
    print()
    summary = P.kld_summary(stats)
    if summary:
        print("\n".join(summary))
    else:
        _info(f"quality report: {stats.count} tokens scored; no KL-divergence statistics under {P.MIN_KLD_SUMMARY} "
              "(give a longer text or more chunks)")
    sys.stdout.flush()
