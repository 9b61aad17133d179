"""Our GGUF writer read back by gguf-py's GGUFReader (an independent implementation of the format)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from common.ggufio import KV, TensorInfo, TensorStream, atomic_output, encode_header
from common.errors import UserError


def _write(path, kvs, tensors, data):
    with atomic_output(path) as f:
        f.write(encode_header(kvs, tensors))
        stream = TensorStream(f, tensors)
        for arr in data:
            flat = arr.reshape(-1)
            stream.write_tensor(iter([flat[: flat.size // 2], flat[flat.size // 2:]]))
        stream.check_complete()


def test_every_value_type_round_trips(tmp_path):
    kvs = [
        KV("a.u8", GGUFValueType.UINT8, 200), KV("a.i8", GGUFValueType.INT8, -100),
        KV("a.u16", GGUFValueType.UINT16, 60000), KV("a.i16", GGUFValueType.INT16, -30000),
        KV("a.u32", GGUFValueType.UINT32, 4_000_000_000), KV("a.i32", GGUFValueType.INT32, -2_000_000_000),
        KV("a.f32", GGUFValueType.FLOAT32, 1.5), KV("a.bool", GGUFValueType.BOOL, True),
        KV("a.str", GGUFValueType.STRING, "héllo ✓"), KV("a.u64", GGUFValueType.UINT64, 2**40),
        KV("a.i64", GGUFValueType.INT64, -(2**40)), KV("a.f64", GGUFValueType.FLOAT64, 0.1),
        KV("a.strs", GGUFValueType.ARRAY, ["x", "", "日本"], GGUFValueType.STRING),
        KV("a.floats", GGUFValueType.ARRAY, [0.5, -1.0], GGUFValueType.FLOAT32),
        KV("a.ints", GGUFValueType.ARRAY, [1, -2, 3], GGUFValueType.INT32),
        KV("a.empty", GGUFValueType.ARRAY, [], GGUFValueType.INT32),
    ]
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(7).astype(np.float16),
            rng.integers(0, 65535, (2, 3, 4), dtype=np.uint16)]
    infos = [TensorInfo("t0", (3, 5), GGMLQuantizationType.F32), TensorInfo("t1", (7,), GGMLQuantizationType.F16),
             TensorInfo("t2", (2, 3, 4), GGMLQuantizationType.BF16)]
    path = tmp_path / "x.gguf"
    _write(path, kvs, infos, data)
    r = GGUFReader(path)
    for kv in kvs:
        got = r.fields[kv.key].contents()
        if kv.vtype in (GGUFValueType.FLOAT32,):
            assert got == pytest.approx(kv.value)
        else:
            assert got == kv.value, kv.key
    assert [t.name for t in r.tensors] == ["t0", "t1", "t2"]
    assert [list(map(int, t.shape)) for t in r.tensors] == [[5, 3], [7], [4, 3, 2]]
    assert all(t.data_offset % 32 == 0 for t in r.tensors)
    np.testing.assert_array_equal(r.tensors[0].data, data[0])
    np.testing.assert_array_equal(r.tensors[1].data, data[1])
    assert r.tensors[2].data.tobytes() == data[2].tobytes()


def test_failure_leaves_no_file(tmp_path):
    dest = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError):
        with atomic_output(dest) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_leaves_no_file(tmp_path):
    dest = tmp_path / "out.gguf"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(dest) as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_wrong_byte_count_is_caught(tmp_path):
    info = TensorInfo("t", (4,), GGMLQuantizationType.F32)
    with pytest.raises(AssertionError):
        with atomic_output(tmp_path / "x.gguf") as f:
            TensorStream(f, [info]).write_tensor(iter([np.zeros(3, np.float32)]))
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        with atomic_output(tmp_path / "nope" / "x.gguf"):
            pass


def test_full_disk_is_reported(tmp_path):
    # /dev/full answers every write with ENOSPC: stage to it via standard output.
    code = ("import sys\nfrom common.ggufio import atomic_output\n"
            "with atomic_output('-') as f:\n    f.write(b'x' * 100)\n")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    with open("/dev/full", "wb") as full:
        p = subprocess.run([sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE, env=env, text=True)
    assert p.returncode != 0
    assert "no space left on device" in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_output_goes_out_in_whole_runs(tmp_path, monkeypatch):
    """The file's bytes as written, handed to the OS in runs of RUN bytes at multiples of RUN (the last run shorter),
    whatever the sizes of the writes, so that the page cache can hold them in huge folios."""
    import common.ggufio as ggufio
    monkeypatch.setattr(ggufio, "RUN", 4096)
    rng = np.random.default_rng(0)
    sizes = [0, 1, 4095, 4096, 4097, 3 * 4096 + 5, 100, 8192, 1, 5000, 12288, 7]
    chunks = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    path = tmp_path / "out.bin"
    calls = []
    with atomic_output(path) as f:
        raw_write = f._f.write

        def recorded(view):
            calls.append(len(view))
            return raw_write(view)

        f._f.write = recorded
        for c in chunks:
            assert f.write(c if len(c) % 2 else c.tobytes()) == len(c)
    expected = b"".join(c.tobytes() for c in chunks)
    assert path.read_bytes() == expected
    assert sum(calls) == len(expected)
    offsets = np.cumsum([0] + calls[:-1])
    assert all(o % 4096 == 0 for o in offsets)
    assert all(n % 4096 == 0 for n in calls[:-1]) and 0 < calls[-1]
    assert max(calls) > 4096  # whole runs of a large write in one call, without a copy into the buffer
