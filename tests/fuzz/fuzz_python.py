"""atheris (libFuzzer for Python) targets for the readers of files the user hands over: the GGUF reader
(common.ggufio.GGUFFile), the safetensors header reader (converter.checkpoint.Checkpoint), config.json and the
tokenizer files (archs.for_config, converter.vocab.load_vocab) and the model loader (runtime.model.Model, the engine's
description and tensors, native.engine_new). A UserError (or an OSError / MemoryError: the CLI's one `error:` line) is
the expected answer to a bad file; any other exception, a crash of the C core or a sanitizer report is a finding.

    python tests/fuzz/fuzz_python.py TARGET CORPUS_DIR [libFuzzer flags]   (`make fuzz` runs each for FUZZ_SECONDS)
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import archs
    import native
    from common.errors import UserError
    from common.ggufio import GGUFFile
    from converter.checkpoint import Checkpoint
    from converter.vocab import load_vocab
    from runtime.arch.base import engine_description, engine_tensors
    from runtime.model import Model

EXPECTED = (UserError, OSError, MemoryError)
WORK = Path(tempfile.mkdtemp(prefix="fuzz-"))
atexit.register(shutil.rmtree, WORK, True)
TOKENIZER_SEED = Path(os.environ.get("FUZZ_TOKENIZER_SEED", ""))  # a checkpoint folder whose other files are kept


def _file(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def fuzz_gguf(data: bytes) -> None:
    try:
        with GGUFFile(_file("m.gguf", data)) as g:
            for e in g.tensors:
                g.data(e)
    except EXPECTED:
        pass


def fuzz_safetensors(data: bytes) -> None:
    folder = WORK / "st"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(data)
    try:
        ck = Checkpoint(folder)
        try:
            for t in ck.tensors.values():
                t.require_supported_dtype()
                t.release(t.array())
        finally:
            ck.close()
    except EXPECTED:
        pass


def fuzz_config(data: bytes) -> None:
    try:
        config = json.loads(data)
    except (ValueError, RecursionError):
        return  # the converter's JSON reader says "is not valid JSON" for these (tests/test_hardening.py)
    if not isinstance(config, dict):
        return
    try:
        model = archs.for_config(config)
        model.hparams()
        model.vocab_size
    except EXPECTED:
        pass


def fuzz_tokenizer(data: bytes) -> None:
    """tokenizer.json replaced, the seed folder's config and tokenizer_config kept."""
    folder = WORK / "tok"
    if not folder.is_dir():
        shutil.copytree(TOKENIZER_SEED, folder)
    (folder / "tokenizer.json").write_bytes(data)
    try:
        load_vocab(folder, 640)
    except EXPECTED:
        pass


def fuzz_model(data: bytes) -> None:
    try:
        model = Model(_file("m.gguf", data))
    except EXPECTED:
        return
    try:
        desc, tensors = engine_description(model), engine_tensors(model)
        native.engine_new(desc, tensors)
    except EXPECTED:
        pass
    except ValueError as e:  # native.engine_new's refusal: the loader must have caught it first
        raise AssertionError(f"the engine refused what the loader took: {e}") from None
    finally:
        model.close()


TARGETS = {"gguf": fuzz_gguf, "safetensors": fuzz_safetensors, "config": fuzz_config, "tokenizer": fuzz_tokenizer,
           "model": fuzz_model}

if __name__ == "__main__":
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
