"""Bad input: one line on stderr, a non-zero exit, no traceback (unless --verbose), no output file, inputs untouched.
Also the TMPDIR staging of `--outfile -` and interruption."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from fixtures import make_checkpoint
from tests.helpers import TOOLKIT, REPO, run_toolkit


@pytest.fixture(scope="module")
def llama_src(tmp_path_factory, shared_fixtures):
    return make_checkpoint("llama", tmp_path_factory.mktemp("src") / "llama")


@pytest.fixture
def model(llama_src, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(llama_src, folder)
    return folder


def snapshot(folder):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def assert_clean_failure(p, folder, before, *, contains):
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error:"), p.stderr
    assert contains in lines[0], lines[0]
    assert "Traceback" not in p.stderr
    assert snapshot(folder) == before  # no output, no temporary file, inputs unchanged


def convert_fails(folder, *args, contains):
    before = snapshot(folder) if folder.is_dir() else {}
    p = run_toolkit("convert", folder, *args)
    if folder.is_dir():
        assert_clean_failure(p, folder, before, contains=contains)
    else:
        assert p.returncode != 0 and contains in p.stderr and "Traceback" not in p.stderr
    return p


def test_missing_folder(tmp_path):
    convert_fails(tmp_path / "nope", contains="does not exist")


def test_missing_config(model):
    (model / "config.json").unlink()
    convert_fails(model, contains="no config.json")


def test_invalid_config(model):
    (model / "config.json").write_text("{not json")
    convert_fails(model, contains="not valid JSON")


def test_invalid_generation_config(model):
    (model / "generation_config.json").write_text('{"top_k": "forty"}')
    convert_fails(model, contains="generation_config.json's top_k is 'forty', not a number")
    (model / "generation_config.json").write_text('{"top_k": 2.5}')
    convert_fails(model, contains="generation_config.json's top_k is 2.5, not a 32-bit integer")
    (model / "generation_config.json").write_text("[1]")
    convert_fails(model, contains="generation_config.json is not a JSON object")


def test_missing_weights(model):
    (model / "model.safetensors").unlink()
    convert_fails(model, contains="no weights")


def test_unsupported_architecture_lists_supported(model):
    cfg = json.loads((model / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (model / "config.json").write_text(json.dumps(cfg))
    p = convert_fails(model, contains="unsupported architecture FalconForCausalLM")
    for name in ("CodeShellForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                 "GPT2LMHeadModel"):
        assert name in p.stderr


def test_unsupported_dtype(model):
    state = load_file(model / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"].astype(np.float64)
    save_file(state, model / "model.safetensors")
    convert_fails(model, contains="dtype F64")


def test_shape_contradicting_config(model):
    cfg = json.loads((model / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (model / "config.json").write_text(json.dumps(cfg))
    convert_fails(model, contains="config.json implies [96, 64]")


def test_absurd_layer_count(model):
    """A config claiming more blocks than any model has is refused before anything is planned per layer (the config
    fuzz target found a Gemma 2 config of 10^200 layers exhausting memory in the layer-type check)."""
    cfg = json.loads((model / "config.json").read_text())
    cfg["num_hidden_layers"] = 10 ** 30
    (model / "config.json").write_text(json.dumps(cfg))
    convert_fails(model, contains="is more than the 65536 layers a model may have")


def test_corrupt_safetensors_header(model):
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"{garbage!!!!"
    path.write_bytes(bytes(data))
    convert_fails(model, contains="corrupt safetensors header")


def test_huge_header_length(model):
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[0:8] = (2**62).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    convert_fails(model, contains="corrupt safetensors header")


def test_truncated_shard(model):
    path = model / "model.safetensors"
    os.truncate(path, path.stat().st_size - 1000)
    convert_fails(model, contains="is truncated")


def test_missing_shard(tmp_path, shared_fixtures):
    folder = make_checkpoint("llama", tmp_path / "sharded", shards=3)
    (folder / "model-00002-of-00003.safetensors").unlink()
    convert_fails(folder, contains="model-00002-of-00003.safetensors listed in model.safetensors.index.json is missing")


def test_pickle_with_code_is_refused(tmp_path, shared_fixtures):
    folder = make_checkpoint("llama", tmp_path / "bin", fmt="bin")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["evil"] = shutil.rmtree  # any global that weights_only loading does not allow
    torch.save(state, folder / "pytorch_model.bin")
    convert_fails(folder, contains="refusing to load")


def test_corrupt_bin(tmp_path, shared_fixtures):
    folder = make_checkpoint("llama", tmp_path / "bin", fmt="bin")
    path = folder / "pytorch_model.bin"
    os.truncate(path, path.stat().st_size // 2)
    convert_fails(folder, contains="cannot read PyTorch checkpoint")


def test_output_may_not_overwrite_input(model):
    convert_fails(model, "--outfile", model / "model.safetensors", contains="would overwrite an input file")


def test_bad_outtype_and_ftype(model):
    """--outtype and the numeric form take the types quantize takes (llama.cpp's ftype ids for the numbers)."""
    convert_fails(model, "--outtype", "q9", contains="unknown quantization type 'q9'; valid: Q4_0, Q4_1")
    convert_fails(model, "99", contains="unknown quantization type '99'")


def test_output_folder_missing(model, tmp_path):
    convert_fails(model, "--outfile", tmp_path / "no" / "x.gguf", contains="does not exist")


def test_verbose_shows_the_traceback(model):
    (model / "config.json").unlink()
    p = run_toolkit("convert", model, "--verbose")
    assert p.returncode != 0 and "Traceback" in p.stderr and "no config.json" in p.stderr


def test_stdout_is_staged_under_tmpdir(model, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    p = run_toolkit("convert", model, "--outfile", "-", env={"TMPDIR": str(stage)}, text=False)
    assert p.returncode == 0, p.stderr
    assert f"staging output in {stage}/toolkit-stage-".encode() in p.stderr
    assert list(stage.iterdir()) == []
    ref = tmp_path / "ref.gguf"
    assert run_toolkit("convert", model, "--outfile", ref).returncode == 0
    assert p.stdout == ref.read_bytes()


def test_full_disk_on_stdout_leaves_nothing(model, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    with open("/dev/full", "wb") as full:
        p = subprocess.run([*TOOLKIT, "convert", str(model), "--outfile", "-"], stdout=full, stderr=subprocess.PIPE,
                           text=True, cwd=REPO, env=dict(os.environ, TMPDIR=str(stage)))
    assert p.returncode != 0 and "no space left on device" in p.stderr and "Traceback" not in p.stderr
    assert list(stage.iterdir()) == []


def test_interrupt_removes_staging(model, tmp_path):
    """Ctrl-C while the staged file is being copied to a pipe nobody reads: exit 130, nothing left in TMPDIR."""
    stage = tmp_path / "stage"
    stage.mkdir()
    # Ctrl-C as a terminal delivers it: Python turns SIGINT into KeyboardInterrupt only when it starts with SIGINT's
    # default action, and a test run started in the background by a non-interactive shell (as CI may) ignores SIGINT
    proc = subprocess.Popen([*TOOLKIT, "convert", str(model), "--outfile", "-"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, env=dict(os.environ, TMPDIR=str(stage)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline:  # the output is larger than a pipe buffer: the copy blocks on the full pipe
        files = list(stage.iterdir())
        if files and files[0].stat().st_size > 1 << 20 and proc.poll() is None:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    assert list(stage.iterdir()) == []
