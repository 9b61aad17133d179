"""Seed corpora for the fuzz targets, written from the tiny fixtures: `python -m tests.fuzz.seeds DIR` writes
DIR/corpus-<target>/ for each target of fuzz_python.py and DIR/tokenizer-seed/ (the folder fuzz_tokenizer edits)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from converter.convert import convert_model
from fixtures import make_checkpoint
from quantizer.quantize import quantize_file
from quantizer.types import parse_file_type


def write_seeds(out: Path) -> None:
    src = make_checkpoint("qwen2", out / "src-qwen2")
    corpora = {t: out / f"corpus-{t}" for t in ("gguf", "safetensors", "config", "tokenizer", "model")}
    for d in corpora.values():
        d.mkdir(parents=True, exist_ok=True)
    convert_model(src, outtype="f32", outfile=corpora["gguf"] / "qwen2-f32.gguf")
    quantize_file(corpora["gguf"] / "qwen2-f32.gguf", corpora["gguf"] / "qwen2-q8_0.gguf", parse_file_type("Q8_0"),
                  info=lambda m: None, warn=lambda m: None)
    for p in corpora["gguf"].iterdir():
        shutil.copy(p, corpora["model"] / p.name)
    shutil.copy(src / "model.safetensors", corpora["safetensors"] / "qwen2.safetensors")
    shutil.copy(src / "tokenizer.json", corpora["tokenizer"] / "qwen2.json")
    for arch in ("llama", "gpt2", "qwen3moe", "gemma2", "phi3"):
        folder = make_checkpoint(arch, out / f"src-{arch}")
        shutil.copy(folder / "config.json", corpora["config"] / f"{arch}.json")
        shutil.rmtree(folder)
    shutil.copy(src / "config.json", corpora["config"] / "qwen2.json")
    seed = out / "tokenizer-seed"
    shutil.rmtree(seed, ignore_errors=True)
    shutil.copytree(src, seed, ignore=shutil.ignore_patterns("*.safetensors"))


if __name__ == "__main__":
    write_seeds(Path(sys.argv[1]))
