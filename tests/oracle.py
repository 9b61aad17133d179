"""The llama.cpp oracle the tests were calibrated against, and the check that the installed one is that build.

The oracle is llama-cpp-python 0.3.36 built by `make install` with the Makefile's CMAKE_ARGS: AVX2/FMA/F16C, no AVX512
(the wheel lands in build/wheels/, keyed by those flags; pip's own wheel cache is never used for it). The tolerances of
the oracle tests were measured against that build, and some only hold for it:

* ggml's *_generic vec_dot functions are our bit-level scalar reference (tests/test_matmul.py). In a build with
  AVX512-VNNI, GCC 12.2 at -O3 miscompiles ggml_vec_dot_q5_0_q8_0_generic: the vectorizer turns its int8 × int8 → int32
  loop into VNNI dot products and gets the 5th bit wrong (reproduced in a standalone file: the loop gives -199606
  instead of 46922 with -O3 -march=x86-64-v4 -mavx512vnni, the right sum without -mavx512vnni, at -O2 or with
  -fno-tree-vectorize). The inputs the test hands it are ours (native.quantize / native.activations), not the build's.
* The forward-pass comparisons (tests/test_runtime.py) follow the AVX2 kernels' float order; see TOLERANCE there for
  what an AVX512 oracle changes.
"""
from __future__ import annotations

VERSION = "0.3.36"
FIX = "make oracle (builds llama-cpp-python with the Makefile's CMAKE_ARGS into build/wheels/ and reinstalls it)"


def features(info: str) -> dict[str, str]:
    """llama_print_system_info()'s 'CPU : SSE3 = 1 | AVX2 = 1 | ...' as {name: value}."""
    out = {}
    for part in info.replace("CPU :", "|").split("|"):
        name, eq, value = part.partition("=")
        if eq:
            out[name.strip()] = value.strip()
    return out


def problem(version: str, info: str) -> str | None:
    """Why this llama-cpp-python is not the expected oracle (None when it is)."""
    if version != VERSION:
        return f"llama-cpp-python {version} is installed, the tests expect {VERSION}"
    f = features(info)
    extra = sorted(k for k, v in f.items() if v == "1" and k.startswith(("AVX512", "AVX_VNNI", "AMX")))
    if f.get("AVX2") != "1" or extra:
        found = ", ".join(f"{k} = 1" for k in extra) if extra else f"AVX2 = {f.get('AVX2', 'absent')}"
        return (f"llama-cpp-python {version} was built with {found}; the tests expect the AVX2 build without AVX512 "
                f"that `make install` makes")
    return None
