"""The models people deploy, against today's llama.cpp built for this CPU: prompt (128 tokens, and 512) and generation
(64 tokens after the 128-token prompt) tokens/s and peak RSS, ours (runtime, 2 threads) and llama.cpp b11434's own
`llama-bench` (2 threads), as benchmarks/run.py measures them, with issue 16's targets. Shapes: Qwen-7B-Chat (the
real config, random weights) and Qwen3-30B-A3B (the real widths and experts; --moe-layers of its 48 layers, 16 by
default: the whole model's source (61 GB) does not fit this machine's disk beside its quantized files), each Q4_0 and
Q4_K_M; with --big also CodeShell-7B (the seed's model and workflow: the real config, random weights).

Set-up per shape, once: a random bf16 checkpoint, converted to each type in one step (`toolkit convert --outtype`: no
f16 file on disk); the checkpoint is deleted once the quantized files exist. Disk at the peak: the checkpoint and both
files (Qwen-7B and CodeShell-7B: 15 GB + 9 GB; the MoE shape at 16 layers: 21 GB + 12 GB); time: about 5 minutes per
7B shape on this machine (2 cores). Measuring, per 7B row and round: about 1 minute for the 128-token prompt and the
generation, both sides, and about 2 more for the 512-token prompt (ours ~50 s at CodeShell-7B Q4_0's ~10 tokens/s;
llama-bench ~70 s, its warm-up being the whole prompt again)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.common import PY, console, llama_cpp_tools, table
from benchmarks.run import COLUMNS, bandwidth, bytes_per_token, measure, row
from fixtures import make_random_checkpoint

TYPES = ("Q4_0", "Q4_K_M")


def _toolkit(*args: str) -> None:
    subprocess.run([PY, "-m", "toolkit", *args], check=True, capture_output=True)


def prepare(data: Path, kind: str, **overrides) -> dict[str, Path]:
    """The shape's quantized files, made once: random bf16 checkpoint → each type in one step; the checkpoint goes."""
    stem = kind + "".join(f"-{k}{v}" for k, v in overrides.items())
    out = {t: data / f"{stem}-{t}.gguf" for t in TYPES}
    if all(p.is_file() for p in out.values()):
        return out
    console.print(f"[bold]models[/bold]: writing a random {stem} checkpoint")
    ckpt = make_random_checkpoint(kind, data / f"{stem}-bf16", **overrides)
    for t, path in out.items():
        if not path.is_file():
            console.print(f"[bold]models[/bold]: converting {stem} to {t}")
            _toolkit("convert", str(ckpt), "--outtype", t.lower(), "--outfile", str(path))
    subprocess.run(["rm", "-rf", str(ckpt)], check=True)
    return out


def run(data: Path, repeat: int = 3, moe_layers: int = 16, big: bool = False) -> None:
    bin_dir = llama_cpp_tools(data)
    shapes = {"Qwen-7B-Chat": prepare(data, "qwen7b"),
              f"Qwen3-30B-A3B ({moe_layers}/48 layers)": prepare(data, "qwen3moe", num_hidden_layers=moe_layers)}
    if big:
        shapes["CodeShell-7B"] = prepare(data, "codeshell7b")
    bw = bandwidth()
    console.print(f"[bold]models[/bold]: memory read bandwidth {bw:.1f} GB/s (2 threads)")
    rows = []
    for shape, files in shapes.items():
        for t, path in files.items():
            console.print(f"[bold]models[/bold]: {shape} {t}")
            rows.append(row([shape, t], measure(path, bin_dir, repeat), bw * 1e9 / bytes_per_token(path, True)))
    table(f"models: tokens/s, 2 threads, {repeat} alternating runs, medians (prompts 128 and 512; generation 64 after "
          "the first; peak RSS of each process, highest of the runs; llama.cpp = b11434's llama-bench; roofline = "
          "bandwidth / weight bytes a token reads, experts it routes to)",
          ["model", "type", *COLUMNS], rows)
