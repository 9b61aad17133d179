"""tokenizer.ggml.pre for a byte-level BPE tokenizer.json, found from the tokenizer itself, never from the model class.

First the fingerprint llama.cpp's converter takes (converter/bpe_fingerprints.py): a tokenizer it knows gets the same
name. A tokenizer it does not know (a newly trained one) is recognised only when its pre_tokenizer section is exactly
one of the splits the runtime implements (and it normalizes nothing but NFC, as llama.cpp's pre-tokenizers assume);
anything else is an error that names what was found, and `--tokenizer-pre` sets the name by hand."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from converter.bpe_fingerprints import FINGERPRINTS, PROBE
from common.errors import UserError

# split regexes as Hugging Face tokenizers write them → the pre-tokenizer llama.cpp implements with that split
_SPLITS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
}


def fingerprint(tokenizer_json: Path) -> str:
    """SHA-256 of str(ids) for the probe text, ids as a Hugging Face tokenizer gives them (special tokens added)."""
    from tokenizers import Tokenizer

    try:
        ids = Tokenizer.from_file(str(tokenizer_json)).encode(PROBE).ids
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # its own exception types, and a Rust panic (pyo3's PanicException: a BaseException)
        raise UserError(f"{tokenizer_json.name} cannot be loaded by the tokenizers library: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return hashlib.sha256(str(ids).encode()).hexdigest()


def _by_structure(pre: object) -> str | None:
    """The name for a pre_tokenizer section that is exactly a split the runtime implements."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not isinstance(steps, list) or len(steps) != 2:
        return None
    split, byte_level = steps
    if not (isinstance(split, dict) and isinstance(byte_level, dict) and byte_level.get("type") == "ByteLevel"
            and byte_level.get("use_regex") is False and not byte_level.get("add_prefix_space", False)):
        return None
    if split.get("type") == "Digits" and split.get("individual_digits") is True:
        return None  # digits then GPT-2's split needs use_regex=True: handled by the fingerprint only
    if split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert"):
        return _SPLITS.get((split.get("pattern") or {}).get("Regex"))
    return None


def detect(folder: Path, tok_json: dict) -> str:
    path = folder / "tokenizer.json"
    digest = fingerprint(path)
    normalizer = tok_json.get("normalizer")
    plain = normalizer is None or (isinstance(normalizer, dict) and normalizer.get("type") == "NFC")
    name = FINGERPRINTS.get(digest) or (_by_structure(tok_json.get("pre_tokenizer")) if plain else None)
    if name is None:
        section = json.dumps(tok_json.get("pre_tokenizer"), ensure_ascii=True)
        if len(section) > 160:
            section = section[:157] + "..."
        raise UserError(f"unknown BPE pre-tokenizer (fingerprint {digest[:16]}…, pre_tokenizer {section}); "
                        "name it with --tokenizer-pre (e.g. llama-bpe, qwen2, gpt-2, deepseek-llm)")
    return name
