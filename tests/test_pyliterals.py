"""converter/pyliterals.py reads constants from a model's Python files without running them: the two forms Qwen1's
tokenizer code has had, and hostile files that must neither run code nor take long or much memory."""
from __future__ import annotations

import time

import pytest

from converter.pyliterals import assigned_values
from converter.vocab_tiktoken import _special_tokens
from common.errors import UserError

# the current Qwen-7B-Chat tokenization_qwen.py (the fixture holds the first release's form)
CURRENT = """
ENDOFTEXT = "<|endoftext|>"
IMSTART = "<|im_start|>"
IMEND = "<|im_end|>"
EXTRAS = tuple((f"<|extra_{i}|>" for i in range(205)))
SPECIAL_START_ID = 151643
SPECIAL_TOKENS = tuple(
    enumerate(
        (
            (
                ENDOFTEXT,
                IMSTART,
                IMEND,
            )
            + EXTRAS
        ),
        start=SPECIAL_START_ID,
    )
)
"""


def test_both_forms_of_qwens_special_tokens(tmp_path, shared_fixtures):
    code = tmp_path / "tokenization_qwen.py"
    code.write_text(CURRENT)
    current = _special_tokens(code, 151643)
    assert len(current) == 208 and current["<|im_end|>"] == 151645 and current["<|extra_204|>"] == 151850
    first = _special_tokens(shared_fixtures / "qwen" / "tokenization_qwen.py", 151643)
    assert len(first) == 208 and first["<|im_start|>"] == 151644 and first["<extra_199>"] == 151850


@pytest.mark.parametrize("source", [
    "A = list(range(300000000))",
    "A = tuple(enumerate(range(10**9)))",
    "A = range(1000000000000000000000000000000)\nB = list(A)",
    "A = [[0 for a in range(100000)] for b in range(100000)]",
    "A0 = 'xxxxxxxxxxxxxxxx'\n" + "\n".join(f"A{i + 1} = A{i} + A{i}" for i in range(60)),
    "import os\nA = os.system('touch PWNED')\nB = __import__('os').system('touch PWNED')",
])
def test_hostile_files_are_neither_run_nor_slow(tmp_path, source, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "t.py"
    path.write_text(source)
    t0 = time.perf_counter()
    values = assigned_values(path)
    assert time.perf_counter() - t0 < 30  # a guard against runaway evaluation (1e10 steps), not a speed target
    assert not (tmp_path / "PWNED").exists()
    assert all(len(v) < 10**7 for vs in values.values() for v in vs if hasattr(v, "__len__"))


def test_a_file_that_does_not_parse_is_a_user_error(tmp_path):
    path = tmp_path / "t.py"
    path.write_text("def (:\n")
    with pytest.raises(UserError, match="cannot be read as Python"):
        assigned_values(path)
