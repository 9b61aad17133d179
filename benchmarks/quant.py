"""Issue 15's benchmark (`--only quant`): the quantization people use today, ours against llama.cpp b11434's own tools
(bench-data/llama.cpp/bin, built by ../shared/tools/build-llama-cpp.sh) on the TinyLlama-1.1B-shaped model (random
weights; `--quant-layers` of its 22 layers), 2 threads, in the same run, each pair taking turns (medians):

- imatrix: seconds per chunk of 512 tokens, `toolkit imatrix` against `llama-imatrix` (wall time / chunks);
- quantize with that importance matrix to IQ4_XS, IQ3_M, IQ2_M and Q4_K_M, `toolkit quantize` against `llama-quantize`
  (target ≤ 0.5×; the bytes compared too);
- one step: `toolkit convert --outtype q4_k_m` from the bf16 checkpoint against llama.cpp's convert_hf_to_gguf.py to
  f16 followed by llama-quantize Q4_K_M;
- perplexity throughput (tokens/s, wall time) on the Q4_K_M file, `toolkit perplexity` against `llama-perplexity`
  (target ≥ 1.0×);
- prompt and generation tokens/s of the IQ4_XS and IQ2_M files, our runtime against llama-bench (target ≥ 1.0×), as
  benchmarks/run.py measures them.

A type our quantizer or runtime does not have yet gets a "not supported yet" row instead of figures; the row fills in
once it lands. The text is the repository's own deterministic corpus (fixtures.tokenizer_corpus), long enough for the
chunks."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from benchmarks.common import PY, alternating_runs, console, drop_file, llama_cpp_tools, table
from benchmarks.quantize import f16_input, same_bytes
from benchmarks.run import measure as measure_tokens
from common.errors import UserError
from fixtures import make_random_checkpoint, tokenizer_corpus

THREADS, CTX, CHUNKS = 2, 512, 4
TINYLLAMA_LAYERS = 22
QUANT_TYPES = ("IQ4_XS", "IQ3_M", "IQ2_M", "Q4_K_M")
RUN_TYPES = ("IQ4_XS", "IQ2_M")
PPL_TYPE = "Q4_K_M"
QUANT_TARGET, SPEED_TARGET = 0.5, 1.0
NOT_YET = "not supported yet"


def _pinned(cmd: list[str]) -> list[str]:
    """A command that sizes its thread pool from the CPUs it may use (toolkit convert, llama.cpp's converter) kept to
    THREADS of them on a larger machine."""
    if (os.cpu_count() or 1) > THREADS and shutil.which("taskset"):
        return ["taskset", "-c", ",".join(str(i) for i in range(THREADS)), *cmd]
    return cmd


def inputs(data: Path, layers: int) -> tuple[Path, Path]:
    """The bf16 checkpoint and its f16 GGUF: the ones the other benchmarks share for the whole model, else a
    `layers`-layer one of the same widths (made once, cached in the data folder)."""
    if layers == TINYLLAMA_LAYERS:
        return make_random_checkpoint("tinyllama", data / "tinyllama-bf16"), f16_input(data)
    ckpt = make_random_checkpoint("tinyllama", data / f"tinyllama-L{layers}-bf16", num_hidden_layers=layers)
    f16 = data / f"tinyllama-L{layers}-f16.gguf"
    if not f16.is_file():
        subprocess.run([PY, "-m", "toolkit", "convert", str(ckpt), "1", "--outfile", str(f16)], check=True,
                       capture_output=True)
    return ckpt, f16


def calibration_text(data: Path, model: Path, n_tokens: int) -> Path:
    """DATA/quant-text.txt: the repository's deterministic corpus, lines added until the model's tokenizer makes at
    least n_tokens of it (llama.cpp's tokenizer may count a few fewer: a quarter more is asked for)."""
    from common.ggufio import GGUFFile
    from runtime.tokenizer import Tokenizer
    with GGUFFile(model) as g:
        tokenizer = Tokenizer.from_gguf(g)
    n = 1000
    while True:
        text = "\n".join(tokenizer_corpus(n, seed=0))
        if len(tokenizer.encode(text)) >= n_tokens * 5 // 4:
            break
        n *= 2
    path = data / "quant-text.txt"
    path.write_text(text, encoding="utf-8")
    return path


def supported(name: str) -> bool:
    """Our quantizer knows the type."""
    from quantizer.types import parse_file_type
    try:
        parse_file_type(name)
        return True
    except UserError:
        return False


def _ratio_row(label: str, unit: str, ours: float, theirs: float, target: str, met: bool | None,
               note: str = "") -> list[str]:
    return [label, f"{ours:.3g} {unit}", f"{theirs:.3g} {unit}", f"{ours / theirs:.2f}×", target,
            "" if met is None else ("met" if met else "MISSED"), note]


def _missing(label: str, why: str = NOT_YET) -> list[str]:
    return [label, why, "", "", "", "", ""]


def imatrix_row(bin_dir: Path, f16: Path, text: Path, out: Path, repeat: int) -> list[str]:
    theirs_out = out.with_name("quant-imatrix-llamacpp.gguf")
    common = ["-m", str(f16), "-f", str(text), "-c", str(CTX), "--chunks", str(CHUNKS), "-t", str(THREADS)]
    r = alternating_runs({"ours": [PY, "-m", "toolkit", "imatrix", *common, "-o", str(out)],
                          "llama.cpp": [str(bin_dir / "llama-imatrix"), *common, "-o", str(theirs_out)]}, repeat)
    drop_file(theirs_out)
    return _ratio_row(f"imatrix, per chunk of {CTX}", "s", r["ours"].seconds / CHUNKS,
                      r["llama.cpp"].seconds / CHUNKS, "", None, f"{CHUNKS} chunks, wall time / chunks")


def quantize_row(bin_dir: Path, f16: Path, matrix: Path, name: str, data: Path, repeat: int) -> tuple[list[str], Path | None]:
    """The row and our output (kept for the later rows; None when the type is not supported yet)."""
    label = f"quantize → {name} (imatrix)"
    if not supported(name):
        return _missing(label), None
    ours_out, theirs_out = data / f"quant-ours-{name}.gguf", data / f"quant-llamacpp-{name}.gguf"
    r = alternating_runs({
        "ours": [PY, "-m", "toolkit", "quantize", "--imatrix", str(matrix), str(f16), str(ours_out), name,
                 str(THREADS)],
        "llama.cpp": [str(bin_dir / "llama-quantize"), "--imatrix", str(matrix), str(f16), str(theirs_out), name,
                      str(THREADS)]}, repeat)
    identical = same_bytes(ours_out, theirs_out)
    drop_file(theirs_out)
    ratio = r["ours"].seconds / r["llama.cpp"].seconds
    return _ratio_row(label, "s", r["ours"].seconds, r["llama.cpp"].seconds, f"≤ {QUANT_TARGET}×",
                      ratio <= QUANT_TARGET and identical, "same bytes" if identical else "BYTES DIFFER"), ours_out


def one_step_row(bin_dir: Path, ckpt: Path, data: Path, repeat: int) -> list[str]:
    ours_out, f16_tmp, theirs_out = (data / "quant-onestep-ours.gguf", data / "quant-onestep-f16.gguf",
                                     data / "quant-onestep-llamacpp.gguf")
    src = bin_dir.parent / "src"
    two_steps = " && ".join(shlex.join(c) for c in (
        _pinned(["env", f"PYTHONPATH={src / 'gguf-py'}", PY, str(src / "convert_hf_to_gguf.py"), str(ckpt),
                 "--outtype", "f16", "--outfile", str(f16_tmp)]),
        [str(bin_dir / "llama-quantize"), str(f16_tmp), str(theirs_out), "Q4_K_M", str(THREADS)],
        ["rm", "-f", str(f16_tmp)]))
    r = alternating_runs({
        "ours": _pinned([PY, "-m", "toolkit", "convert", str(ckpt), "--outtype", "q4_k_m", "--outfile",
                         str(ours_out)]),
        "llama.cpp": ["bash", "-c", two_steps]}, repeat)
    for p in (ours_out, f16_tmp, theirs_out):
        drop_file(p)
    return _ratio_row("convert bf16 → Q4_K_M, one step", "s", r["ours"].seconds, r["llama.cpp"].seconds, "", None,
                      f"llama.cpp: convert to f16 + llama-quantize; RSS ours {r['ours'].peak_rss_mb:.0f} MB")


def perplexity_row(bin_dir: Path, model: Path | None, text: Path, repeat: int) -> list[str]:
    label = f"perplexity {PPL_TYPE}, tokens/s"
    if model is None:
        return _missing(label)
    common = ["-m", str(model), "-f", str(text), "-c", str(CTX), "--chunks", str(CHUNKS), "-t", str(THREADS)]
    r = alternating_runs({"ours": [PY, "-m", "toolkit", "perplexity", *common],
                          "llama.cpp": [str(bin_dir / "llama-perplexity"), *common]}, repeat)
    ours, theirs = CHUNKS * CTX / r["ours"].seconds, CHUNKS * CTX / r["llama.cpp"].seconds
    return _ratio_row(label, "tok/s", ours, theirs, f"≥ {SPEED_TARGET}×", ours / theirs >= SPEED_TARGET,
                      f"{CHUNKS} chunks of {CTX}, wall time")


def run_rows(bin_dir: Path, name: str, model: Path | None, repeat: int) -> list[list[str]]:
    labels = (f"{name} prompt tokens/s", f"{name} generation tokens/s")
    if model is None:
        return [_missing(label) for label in labels]
    try:
        f = measure_tokens(model, bin_dir, repeat)
    except subprocess.CalledProcessError as e:   # our runtime lacks the type's kernels
        last = (e.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        return [_missing(label, f"{NOT_YET} (our runtime: {last[0][:80]})") for label in labels]
    return [_ratio_row(labels[0], "tok/s", f.prompt, f.prompt_llama, f"≥ {SPEED_TARGET}×",
                       f.prompt / f.prompt_llama >= SPEED_TARGET, "llama-bench"),
            _ratio_row(labels[1], "tok/s", f.gen, f.gen_llama, f"≥ {SPEED_TARGET}×",
                       f.gen / f.gen_llama >= SPEED_TARGET, "llama-bench")]


def run(data: Path, repeat: int = 3, layers: int = TINYLLAMA_LAYERS) -> None:
    bin_dir = llama_cpp_tools(data)
    ckpt, f16 = inputs(data, layers)
    text = calibration_text(data, f16, CHUNKS * CTX)
    shape = "TinyLlama-1.1B" + ("" if layers == TINYLLAMA_LAYERS else f" ({layers}/{TINYLLAMA_LAYERS} layers)")
    console.print(f"[bold]quant[/bold]: {shape}, {THREADS} threads, {repeat} alternating runs per row")
    matrix = data / "quant-imatrix.gguf"
    rows = [imatrix_row(bin_dir, f16, text, matrix, repeat)]
    kept: dict[str, Path | None] = {}
    for name in QUANT_TYPES:
        console.print(f"[bold]quant[/bold]: quantize {name}")
        row, kept[name] = quantize_row(bin_dir, f16, matrix, name, data, repeat)
        rows.append(row)
    console.print("[bold]quant[/bold]: one-step convert")
    rows.append(one_step_row(bin_dir, ckpt, data, repeat))
    console.print("[bold]quant[/bold]: perplexity")
    rows.append(perplexity_row(bin_dir, kept[PPL_TYPE], text, repeat))
    for name in RUN_TYPES:
        console.print(f"[bold]quant[/bold]: run {name}")
        rows += run_rows(bin_dir, name, kept[name], repeat)
    for path in [matrix, text, *kept.values()]:
        if path is not None:
            drop_file(path)
    table(f"quant {shape}: ours against llama.cpp b11434's tools, {THREADS} threads, medians of {repeat} alternating "
          "runs (imatrix: ours, used by both quantizers)",
          ["row", "ours", "llama.cpp", "ratio", "target", "", "note"], rows)
