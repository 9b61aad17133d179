"""Build of the native core as a Python extension module (metadata lives in pyproject.toml)."""
import os
from glob import glob

from setuptools import Extension, setup

# TOOLKIT_SANITIZE=1: build with AddressSanitizer + UndefinedBehaviorSanitizer (`make test-sanitize` builds into
# build/sanitize, never over the in-place native/_core*.so). Every UB report aborts; -g for readable reports, at the
# normal -O3 (the code that ships, and 2-7x faster under the sanitizers than -O1).
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"] \
    if os.environ.get("TOOLKIT_SANITIZE", "0") not in ("", "0") else []

setup(
    ext_modules=[
        Extension(
            "native._core",
            sources=sorted(glob("native/*.c")),
            depends=sorted(glob("native/*.h")),
            # No -march=native: SIMD paths are compiled per function with target attributes and chosen at run time,
            # so a wheel built here runs on any x86-64. No FP contraction: the reference quantizers must round
            # exactly as ggml-base's (built for baseline x86-64, no FMA) to be bit-identical; kernels that want FMA
            # use it explicitly through intrinsics.
            extra_compile_args=["-std=c11", "-O3", "-ffp-contract=off", "-fno-math-errno", "-Wall",
                                "-Wno-unused-function", *SANITIZE],
            extra_link_args=["-pthread", *SANITIZE[:1]],
        )
    ]
)
