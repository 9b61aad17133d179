"""Convert benchmark: TinyLlama-1.1B-shaped random bf16 checkpoint → f16 GGUF, ours and llama.cpp's
convert_hf_to_gguf.py (from the pinned llama-cpp-python sources) in the same run; and the full-size
CodeShell-7B-shaped checkpoint (about 16 GB), ours, with llama.cpp's too when asked (`--llama-cpp-codeshell`)."""
from __future__ import annotations

from pathlib import Path

from benchmarks.common import PY, console, drop_file, llama_cpp_source, median_run, table
from fixtures import make_random_checkpoint

TARGET_TINY_S, TARGET_TINY_MB, TARGET_CODESHELL_MB = 6.0, 600.0, 1536.0


def ours(folder: Path, out: Path, repeat: int):
    return median_run([PY, "-m", "toolkit", "convert", str(folder), "1", "--outfile", str(out)], repeat)


def llama_cpp(folder: Path, out: Path, src: Path, repeat: int):
    return median_run([PY, str(src / "convert_hf_to_gguf.py"), str(folder), "--outtype", "f16", "--outfile",
                       str(out)], repeat, env={"PYTHONPATH": str(src / "gguf-py")})


def run(data: Path, repeat: int = 3, codeshell: bool = True, llama_cpp_codeshell: bool = False) -> None:
    data.mkdir(parents=True, exist_ok=True)
    console.print("[bold]convert[/bold]: generating benchmark checkpoints (cached in the data folder)")
    tiny = make_random_checkpoint("tinyllama", data / "tinyllama-bf16")
    src = llama_cpp_source(data)
    out = data / "tinyllama-f16.gguf"
    a = ours(tiny, out, repeat)
    b = llama_cpp(tiny, data / "tinyllama-f16-llamacpp.gguf", src, repeat)
    drop_file(data / "tinyllama-f16-llamacpp.gguf")
    rows = [["TinyLlama-1.1B bf16 → f16", f"{a.seconds:.2f} s", f"{b.seconds:.2f} s", f"{a.seconds / b.seconds:.2f}×",
             f"{a.peak_rss_mb:.0f} MB", f"{b.peak_rss_mb:.0f} MB", f"{a.peak_rss_mb / b.peak_rss_mb:.2f}×",
             f"≤ {TARGET_TINY_S:.0f} s, ≤ {TARGET_TINY_MB:.0f} MB: "
             + ("met" if a.seconds <= TARGET_TINY_S and a.peak_rss_mb <= TARGET_TINY_MB else "MISSED")]]
    if codeshell:
        cs = make_random_checkpoint("codeshell7b", data / "codeshell7b-bf16")
        c = ours(cs, data / "codeshell7b-f16.gguf", 1)
        drop_file(data / "codeshell7b-f16.gguf")
        if llama_cpp_codeshell:
            d = llama_cpp(cs, data / "codeshell7b-f16-llamacpp.gguf", src, 1)
            drop_file(data / "codeshell7b-f16-llamacpp.gguf")
            theirs = [f"{d.seconds:.1f} s", f"{c.seconds / d.seconds:.2f}×", f"{d.peak_rss_mb:.0f} MB",
                      f"{c.peak_rss_mb / d.peak_rss_mb:.2f}×"]
        else:
            theirs = ["(--llama-cpp-codeshell)", "", "", ""]
        rows.append(["CodeShell-7B bf16 → f16", f"{c.seconds:.1f} s", theirs[0], theirs[1], f"{c.peak_rss_mb:.0f} MB",
                     theirs[2], theirs[3], f"≤ {TARGET_CODESHELL_MB:.0f} MB RSS: "
                     + ("met" if c.peak_rss_mb <= TARGET_CODESHELL_MB else "MISSED")])
    table(f"convert (median of {repeat} runs where repeated; peak RSS of the converting process)",
          ["model", "ours", "llama.cpp", "time ratio", "our RSS", "llama.cpp RSS", "RSS ratio", "target"], rows)
