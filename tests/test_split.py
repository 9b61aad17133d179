"""Split models (issue 15, point 6): `toolkit split` against llama-gguf-split's layout read by gguf-py (an
independent reader of the keys; there is no llama-gguf-split binary in bench-data/llama.cpp/bin), `--merge` back to
the original bytes, llama.cpp (llama-cpp-python) and our runtime loading a split model given its first file with the
logits of the one file, `quantize --keep-split` and a split input against llama.cpp's own llama_model_quantize,
`convert`/`quantize` --split-max-*, the loader's one-line errors, and no part left behind by a failed write."""
from __future__ import annotations

import ctypes
import os
import shutil

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from common.errors import UserError
from common.ggufsplit import SplitOptions, gguf_output, merge_model, open_gguf, split_model
from tests.helpers import fields, run_toolkit, tensors

PROMPT = [1, 403, 407, 261, 378, 395, 268, 302, 412, 263, 350]


def parts(prefix, n):
    return [prefix.parent / f"{prefix.name}-{i + 1:05d}-of-{n:05d}.gguf" for i in range(n)]


def gguf_split_groups(sizes: list[int], max_size: int | None, max_tensors: int | None) -> list[int]:
    """llama-gguf-split's split_strategy (tools/gguf-split/gguf-split.cpp), for the test: a new file when the padded
    tensor data would pass max_size, or every max_tensors tensors."""
    counts, current, size = [], 0, 0
    for i, n in enumerate(sizes):
        n += (-n) % 32
        if max_size is not None and size + n > max_size or max_tensors is not None and i > 0 and i % max_tensors == 0:
            counts.append(current)
            current, size = 0, 0
        current += 1
        size += n
    return counts + [current]


def gguf_py_header(path, kvs: list[tuple[str, object, GGUFValueType, GGUFValueType | None]], tensor_list) -> bytes:
    """The bytes gguf-py's GGUFWriter (an independent writer) puts before the tensor data for these keys and tensors
    (GGUFReader tensors)."""
    w = GGUFWriter(path, arch="")
    w.kv_data[0].clear()  # its general.architecture: the keys below are the whole metadata
    for key, value, vtype, sub in kvs:
        w.add_key_value(key, value, vtype, sub)
    for t in tensor_list:
        w.add_tensor_info(t.name, [int(d) for d in reversed(t.shape)], np.float32, int(t.n_bytes), t.tensor_type)
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def split3(tmp_path_factory, stories260k_f32):
    """stories260K f32 split in 3 by size (400 kB of tensors per file at most)."""
    prefix = tmp_path_factory.mktemp("split3") / "stories"
    split_model(stories260k_f32, prefix, SplitOptions(max_size=400_000), info=lambda m: None)
    return parts(prefix, 3)


def test_split_files_are_laid_out_as_gguf_split_writes_them(stories260k_f32, split3, tmp_path):
    whole = GGUFReader(stories260k_f32)
    meta = fields(whole)
    expected = gguf_split_groups([int(t.n_bytes) for t in whole.tensors], 400_000, None)
    assert len(expected) == 3
    names = [t.name for t in whole.tensors]
    data = tensors(whole)
    start = 0
    for no, (path, count) in enumerate(zip(split3, expected)):
        r = GGUFReader(path)
        got = fields(r)
        # gguf-split: all metadata in the first file, then split.no, split.tensors.count and split.count (set last)
        head = dict(meta) if no == 0 else {}
        head.update({"split.no": no, "split.tensors.count": len(names), "split.count": 3})
        assert list(got) == list(head)
        assert got == head
        types = {k: f.types[0] for k, f in r.fields.items() if k.startswith("split.")}
        assert types == {"split.no": GGUFValueType.UINT16, "split.count": GGUFValueType.UINT16,
                         "split.tensors.count": GGUFValueType.INT32}
        assert [t.name for t in r.tensors] == names[start:start + count]
        keys = [(k, f.contents(), f.types[0], f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None)
                for k, f in whole.fields.items() if not k.startswith("GGUF.")] if no == 0 else []
        keys += [("split.no", no, GGUFValueType.UINT16, None),
                 ("split.tensors.count", len(names), GGUFValueType.INT32, None),
                 ("split.count", 3, GGUFValueType.UINT16, None)]
        header = gguf_py_header(tmp_path / f"header{no}.gguf", keys, whole.tensors[start:start + count])
        ours = path.read_bytes()
        end = len(header) + (-len(header)) % 32
        assert ours[:len(header)] == header and ours[len(header):end] == bytes(end - len(header))
        for name, (shape, ttype, arr) in tensors(r).items():
            assert (shape, ttype) == data[name][:2] and np.array_equal(arr, data[name][2])
        start += count


def test_split_by_tensors_and_merge_restores_the_bytes(stories260k_f32, tmp_path):
    r = run_toolkit("split", "--split-max-tensors", "20", stories260k_f32, tmp_path / "s.gguf")
    assert r.returncode == 0, r.stderr
    files = parts(tmp_path / "s", 3)
    counts = [len(GGUFReader(p).tensors) for p in files]
    assert counts == gguf_split_groups([1] * 47, None, 20) == [20, 20, 7]
    r = run_toolkit("split", "--merge", files[0], tmp_path / "merged.gguf")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "merged.gguf").read_bytes() == stories260k_f32.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in files] + ["merged.gguf"])


def test_runtime_and_info_read_the_split_model_with_the_logits_of_the_one_file(stories260k_f32, split3):
    from runtime.api import Llama
    whole = Llama(str(stories260k_f32), n_ctx=64, logits_all=True, verbose=False)
    whole.eval(PROMPT)
    split = Llama(str(split3[0]), n_ctx=64, logits_all=True, verbose=False)
    split.eval(PROMPT)
    assert np.array_equal(whole.scores, split.scores)
    r = run_toolkit("info", split3[0])
    assert r.returncode == 0, r.stderr
    assert "47 tensors" in r.stdout and "in 3 split files" in r.stdout


@pytest.mark.slow
def test_llama_cpp_loads_our_split_model_given_its_first_file(stories260k_f32, split3):
    llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")
    from tests.helpers import llama_cpp_logit_diff

    def theirs(path):
        llm = llama_cpp.Llama(str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2,
                              type_k=0, type_v=0)
        llm.eval(PROMPT)
        return np.array(llm.scores[:len(PROMPT)])

    assert np.array_equal(theirs(split3[0]), theirs(stories260k_f32))
    assert llama_cpp_logit_diff(llama_cpp, split3[0], PROMPT) < 2e-3


@pytest.mark.slow
@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K_M"])
def test_quantize_split_input_and_keep_split_match_llama_model_quantize(split3, tmp_path, type_name):
    llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")
    from quantizer.quantize import quantize_file
    from quantizer.types import parse_file_type
    ft = parse_file_type(type_name)
    for keep in (True, False):
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype, p.nthread, p.keep_split = int(ft.ftype), 2, keep
        # llama_model_quantize takes the output's prefix with keep_split (llama-quantize strips the .gguf itself)
        theirs = tmp_path / ("theirs" if keep else "theirs.gguf")
        assert llama_cpp.llama_model_quantize(str(split3[0]).encode(), str(theirs).encode(), ctypes.byref(p)) == 0
        quantize_file(split3[0], tmp_path / "ours.gguf", ft, nthreads=2, keep_split=keep, info=lambda m: None,
                      warn=lambda m: None)
        pairs = zip(parts(tmp_path / "ours", 3), parts(theirs, 3)) if keep else [(tmp_path / "ours.gguf", theirs)]
        for ours_path, theirs_path in pairs:
            assert ours_path.read_bytes() == theirs_path.read_bytes(), ours_path.name


def test_convert_and_quantize_split_outputs_merge_to_the_one_file(shared_fixtures, stories260k_f32, tmp_path):
    r = run_toolkit("convert", shared_fixtures / "stories260K", "--outtype", "f32", "--split-max-size", "1M",
                    "--outfile", tmp_path / "c.gguf")
    assert r.returncode == 0, r.stderr
    conv = parts(tmp_path / "c", 2)
    assert [len(GGUFReader(p).tensors) for p in conv] == \
        gguf_split_groups([int(t.n_bytes) for t in GGUFReader(stories260k_f32).tensors], 1_000_000, None)
    merge_model(conv[0], tmp_path / "c-merged.gguf", info=lambda m: None)
    assert (tmp_path / "c-merged.gguf").read_bytes() == stories260k_f32.read_bytes()

    r = run_toolkit("quantize", "--split-max-tensors", "16", stories260k_f32, tmp_path / "q.gguf", "Q8_0")
    assert r.returncode == 0, r.stderr
    assert run_toolkit("quantize", stories260k_f32, tmp_path / "q1.gguf", "Q8_0").returncode == 0
    quant = parts(tmp_path / "q", 3)
    assert [len(GGUFReader(p).tensors) for p in quant] == [16, 16, 15]
    merge_model(quant[0], tmp_path / "q-merged.gguf", info=lambda m: None)
    assert (tmp_path / "q-merged.gguf").read_bytes() == (tmp_path / "q1.gguf").read_bytes()

    r = run_toolkit("convert", shared_fixtures / "stories260K", "--outtype", "q8_0", "--split-max-tensors", "16",
                    "--outfile", tmp_path / "cq.gguf")  # one step: the quantized checkpoint written in parts
    assert r.returncode == 0, r.stderr
    merge_model(parts(tmp_path / "cq", 3)[0], tmp_path / "cq-merged.gguf", info=lambda m: None)
    assert (tmp_path / "cq-merged.gguf").read_bytes() == (tmp_path / "q1.gguf").read_bytes()


def one_line_error(r, *words):
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr


def test_a_missing_or_foreign_part_is_a_one_line_error(stories260k_f32, split3, tmp_path):
    for p in split3:
        shutil.copy(p, tmp_path / p.name)
    first, second, third = (tmp_path / p.name for p in split3)
    one_line_error(run_toolkit("info", second), "part 2 of a model split in 3", first.name)
    third.rename(tmp_path / "away.gguf")
    one_line_error(run_toolkit("run", "-m", first, "-p", "x", "-n", "1"), third.name, "missing")
    shutil.copy(second, third)  # part 2 where part 3 should be
    one_line_error(run_toolkit("quantize", first, tmp_path / "q.gguf", "Q8_0"), third.name,
                   "is part 2 of 3: expected part 3 of 3")
    assert not (tmp_path / "q.gguf").exists()
    shutil.copy(stories260k_f32, third)  # a file without split keys
    with pytest.raises(UserError, match="has no split keys"):
        open_gguf(first)
    one_line_error(run_toolkit("split", "--merge", stories260k_f32, tmp_path / "m.gguf"), "not a split model")
    one_line_error(run_toolkit("split", "--split-max-size", "50K", stories260k_f32, tmp_path / "x"),
                   "--split-max-size", "M (megabytes) or G (gigabytes)")
    one_line_error(run_toolkit("quantize", "--keep-split", "--split-max-tensors", "4", split3[0],
                               tmp_path / "q.gguf", "Q8_0"), "--keep-split")


def test_a_failed_split_write_leaves_no_part_behind(stories260k_f32, tmp_path):
    g = open_gguf(stories260k_f32)
    with g:
        infos = [e.info for e in g.tensors]
        with pytest.raises(RuntimeError, match="stop"):
            with gguf_output(tmp_path / "out.gguf", list(g.kv.values()), infos, [20, 20, 7]) as stream:
                for i, e in enumerate(g.tensors):
                    if i == 30:  # in the second file, the first one complete
                        raise RuntimeError("stop")
                    stream.write_tensor([g.data(e)])
    assert list(tmp_path.iterdir()) == []
