"""Build of the native core as a Python extension module (metadata lives in pyproject.toml)."""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "native._core",
            sources=["native/module.c", "native/convert.c", "native/parallel.c"],
            depends=["native/core.h"],
            # No -march=native: SIMD paths are compiled per function with target attributes and chosen at run time,
            # so a wheel built here runs on any x86-64. -ffp-contract=fast matches ggml's FMA contraction.
            extra_compile_args=["-std=c11", "-O3", "-ffp-contract=fast", "-Wall", "-Wno-unused-function"],
            extra_link_args=["-pthread"],
        )
    ]
)
