"""The reference bundle of tests/native/forward_check.c: a tiny real model and the logits our runtime computes for it on
this (x86) machine, for the C driver to compare its own forward pass with on another architecture (ARM64 under qemu),
where there is no Python.

stories260K (../shared/fixtures) converted by our converter to F32 and quantized by our quantizer to Q8_0 and Q4_0
(its rows are 64 wide: a K-quant would fall back to other types on every tensor; ffn_down, 172 wide, falls back to
F16 in both), then one prompt run through runtime.api.Llama with every token's logits kept (f32 KV cache). Before
anything is written, each file's logits are checked against llama.cpp's on the same file (llama-cpp-python, the test
oracle; one token per batch, f32 KV cache) within the runtime tests' tolerances, so what the driver compares with is
proven right independently, not merely our own earlier output.

OUTDIR receives, all at once (written beside it, then renamed: no partial bundle):
  cases.txt              "tokens N t0 .. tN-1", then per file "model FILE TYPE TOL LOGITS"
  stories260K-TYPE.gguf  the model files
  stories260K-TYPE.f32   N x n_vocab float32 logits, little-endian, token-major

Usage: python tests/native/reference_bundle.py OUTDIR [FIXTURES]  (make test-kernels / test-arm64 run it when the
bundle is missing or older than this file).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# what the driver allows, max |ours - recorded| over every logit: F32 1e-5 (the logits are ~10 in magnitude: a few
# ulps, for sums the NEON kernels add in another order than AVX2's); the quantized files the runtime tests' tolerance
# against llama.cpp (tests/test_runtime.py's TOLERANCE), though the integer kernels give the same bits everywhere
CASES = {"F32": 1e-5, "Q8_0": 1e-2, "Q4_0": 1e-2}
ORACLE_TOLERANCE = 1e-2  # ours against llama.cpp here, as tests/test_runtime.py::test_against_llama_cpp
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play"


def logits(path: Path, tokens: list[int]) -> np.ndarray:
    from runtime.api import Llama
    llm = Llama(str(path), n_ctx=128, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(tokens)
    return llm.scores


def oracle_logits(path: Path, tokens: list[int]) -> np.ndarray:
    import llama_cpp
    ref = llama_cpp.Llama(str(path), n_ctx=128, n_batch=1, n_ubatch=1, logits_all=True, verbose=False, n_threads=2,
                          type_k=0, type_v=0)
    ref.eval(tokens)
    return np.array(ref.scores[:len(tokens)], dtype=np.float32)


def write_bundle(out: Path, fixtures: Path) -> None:
    from converter.convert import convert_model
    from quantizer.quantize import quantize_file
    from quantizer.types import parse_file_type
    from runtime.api import Llama
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    f32 = tmp / "stories260K-F32.gguf"
    convert_model(fixtures / "stories260K", outtype="f32", outfile=f32)
    tokens = Llama(str(f32), n_ctx=128, verbose=False).tokenize(PROMPT)
    lines = [f"tokens {len(tokens)} " + " ".join(map(str, tokens))]
    for type_name, tol in CASES.items():
        path = tmp / f"stories260K-{type_name}.gguf"
        if type_name != "F32":
            quantize_file(f32, path, parse_file_type(type_name), info=lambda m: None, warn=lambda m: None)
        ours = logits(path, tokens)
        diff = float(np.abs(ours - oracle_logits(path, tokens)).max())
        if not diff < ORACLE_TOLERANCE:
            raise SystemExit(f"{path.name}: our logits are {diff:.3g} from llama.cpp's: no bundle written")
        np.ascontiguousarray(ours, dtype="<f4").tofile(tmp / f"stories260K-{type_name}.f32")
        lines.append(f"model {path.name} {type_name} {tol:g} stories260K-{type_name}.f32")
        print(f"{path.name}: {len(tokens)} tokens, logits up to {np.abs(ours).max():.2f}, {diff:.2g} from llama.cpp's")
    (tmp / "cases.txt").write_text("\n".join(lines) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__.strip().splitlines()[-2])
    sys.path.insert(0, str(REPO))
    write_bundle(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else REPO.parent / "shared" / "fixtures")
