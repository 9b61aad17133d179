"""Shared pytest fixtures."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests import oracle

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
# a folder of the session's temporary one whose name starts so is kept for the whole run; the others (module-scoped
# fixtures' files) are removed when their module ends
SESSION_DIR = "session-"


@pytest.fixture(scope="module", autouse=True)
def _module_temp_dirs_removed(request, tmp_path_factory):
    """The folders a test module made with tmp_path_factory (its fixtures' models and checkpoints), removed when the
    module ends with no test failed, so that a full run's disk use is one module's, not the sum of all of them
    (pyproject's tmp_path_retention_policy does this for each test's tmp_path)."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed != failed:
        return
    for entry in set(base.iterdir()) - before:
        if not entry.name.startswith(SESSION_DIR):
            shutil.rmtree(entry, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """../shared/fixtures: required in CI (CI=true), skipped elsewhere when missing."""
    if not SHARED.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared fixtures missing at {SHARED} (required in CI)")
        pytest.skip(f"shared fixtures missing at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def stories260k_f32(tmp_path_factory, shared_fixtures) -> Path:
    """stories260K (a real trained tiny Llama) converted to f32 once for every test module that serves or runs it."""
    from converter.convert import convert_model
    path = tmp_path_factory.mktemp(SESSION_DIR + "stories") / "stories260K-f32.gguf"
    convert_model(shared_fixtures / "stories260K", outtype="f32", outfile=path)
    return path


@pytest.fixture(scope="session")
def ggml():
    """ggml's quantizers and dequantizers through ctypes (the oracle's libggml-base), loaded once."""
    from tests.test_quants_k_oracle import Ggml
    return Ggml()


@pytest.fixture(scope="session")
def stories_rows(stories260k_f32):
    """stories260K's trained matrices (rows of 64 and 172) laid end to end in rows of N_PER_ROW (the quantizer oracle
    tests' row: 8 super-blocks): real weights for the types whose rows are multiples of 256."""
    from tests.helpers import matrices_end_to_end
    from tests.test_quants_k_oracle import N_PER_ROW
    return matrices_end_to_end(stories260k_f32, N_PER_ROW)


@pytest.fixture(scope="module")
def qwen2(shared_fixtures):
    """llama.cpp's Qwen2 test vocabulary (151,936 tokens): its path and our tokenizer of it."""
    from common.ggufio import GGUFFile
    from runtime.tokenizer import Tokenizer
    path = shared_fixtures / "llama-vocab" / "ggml-vocab-qwen2.gguf"
    with GGUFFile(path) as g:
        return path, Tokenizer.from_gguf(g)


@pytest.fixture(scope="module")
def llama_vocab(qwen2):
    """The same vocabulary loaded by llama.cpp (the grammar oracle, tests/grammar_oracle.py)."""
    pytest.importorskip("llama_cpp")
    from tests.grammar_oracle import LlamaVocab
    v = LlamaVocab(qwen2[0])
    yield v
    v.close()


def pytest_configure(config):
    """Stop at once, with one line, when llama-cpp-python is not the build the oracle tests were calibrated for."""
    try:
        import llama_cpp
    except ImportError:
        return  # the oracle tests skip (CI, where it is required, fails them)
    why = oracle.problem(llama_cpp.__version__, llama_cpp.llama_print_system_info().decode(errors="replace"))
    if why:
        raise pytest.UsageError(f"wrong llama.cpp oracle: {why}; fix: {oracle.FIX}")
