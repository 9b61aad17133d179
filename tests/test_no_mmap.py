"""--no-mmap (llama.cpp's flag, llama-cpp-python's use_mmap=False): the weights read into anonymous memory in huge
pages instead of the file mapped. The same bytes, the same logits and text as the mapping; the file untouched."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from common.ggufio import GGUFFile
from converter.convert import convert_model
from fixtures import make_checkpoint
from runtime.api import Llama
from tests.helpers import run_toolkit


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    root = tmp_path_factory.mktemp("nommap")
    out = root / "llama.gguf"
    convert_model(make_checkpoint("llama", root / "llama"), outtype="f16", outfile=out)
    return out


def test_copy_holds_the_file_bytes(gguf):
    before = hashlib.sha256(gguf.read_bytes()).hexdigest()
    with GGUFFile(gguf) as mapped, GGUFFile(gguf, copy=True) as copied:
        assert [e.info.name for e in copied.tensors] == [e.info.name for e in mapped.tensors]
        for a, b in zip(mapped.tensors, copied.tensors):
            assert np.array_equal(mapped.data(a), copied.data(b)), a.info.name
            copied.release(b)  # a copy cannot read its pages again: release keeps them
            assert np.array_equal(mapped.data(a), copied.data(b)), f"{a.info.name} after release"
    assert hashlib.sha256(gguf.read_bytes()).hexdigest() == before


def test_same_logits_as_the_mapping(gguf):
    tokens = [1, 15, 27, 3, 99, 4, 250, 7]
    out = []
    for use_mmap in (True, False):
        llm = Llama(str(gguf), n_ctx=64, n_threads=2, verbose=False, logits_all=True, use_mmap=use_mmap)
        try:
            llm.eval(tokens)
            out.append(np.array(llm.scores[:len(tokens)]))
        finally:
            llm.close()
    assert np.array_equal(out[0], out[1])


def test_run_no_mmap(gguf):
    args = ("run", "-m", gguf, "-p", "Hello", "-n", "8", "--temp", "0", "-s", "1")
    mapped, copied = run_toolkit(*args), run_toolkit(*args, "--no-mmap")
    assert mapped.returncode == 0 and copied.returncode == 0, copied.stderr
    assert copied.stdout == mapped.stdout


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "absent"
    return text[text.index("[") + 1:text.index("]")]


@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"), reason="the kernel gives no transparent huge pages")
def test_copy_is_in_huge_pages(tmp_path):
    """The copy is private anonymous memory asked for huge pages (a shared anonymous mapping would be shmem, which
    gets none unless shmem_enabled allows them): its mapping in /proc/self/smaps holds AnonHugePages."""
    import ctypes
    from common.ggufio import _read_anonymous
    path = tmp_path / "data"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes())
    with open(path, "rb") as f:
        mm = _read_anonymous(f, 16 << 20, path)
    try:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        huge, inside = None, False
        for line in open("/proc/self/smaps"):
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "AnonHugePages:":
                huge = int(line.split()[1])
                break
        assert huge is not None and huge >= 2048, f"AnonHugePages of the copy: {huge} kB"
        assert bytes(mm[:4096]) == path.read_bytes()[:4096]
    finally:
        mm.close()
