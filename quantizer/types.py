"""The one table of llama.cpp file types (ftypes) we write: name, id, default tensor type, bits per weight,
description, as llama-quantize lists them."""
from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType as FT

import native
from common.errors import UserError


@dataclass(frozen=True)
class FileType:
    name: str
    ftype: FT
    default: T          # tensor type of the bulk of the weights
    bpw: float          # nominal bits per weight of `default`
    description: str


FILE_TYPES: list[FileType] = [
    FileType("Q4_0", FT.MOSTLY_Q4_0, T.Q4_0, 4.5, "4.34G, +0.4685 ppl @ Llama-3-8B"),
    FileType("Q4_1", FT.MOSTLY_Q4_1, T.Q4_1, 5.0, "4.78G, +0.4511 ppl @ Llama-3-8B"),
    FileType("Q5_0", FT.MOSTLY_Q5_0, T.Q5_0, 5.5, "5.21G, +0.1316 ppl @ Llama-3-8B"),
    FileType("Q5_1", FT.MOSTLY_Q5_1, T.Q5_1, 6.0, "5.65G, +0.1062 ppl @ Llama-3-8B"),
    FileType("Q2_K", FT.MOSTLY_Q2_K, T.Q2_K, 2.625, "2.96G, +3.5199 ppl @ Llama-3-8B"),
    FileType("Q2_K_S", FT.MOSTLY_Q2_K_S, T.Q2_K, 2.625, "2.96G, +3.1836 ppl @ Llama-3-8B"),
    FileType("IQ2_XXS", FT.MOSTLY_IQ2_XXS, T.IQ2_XXS, 2.0625, "2.06 bpw quantization"),
    FileType("IQ2_XS", FT.MOSTLY_IQ2_XS, T.IQ2_XS, 2.3125, "2.31 bpw quantization"),
    FileType("IQ2_S", FT.MOSTLY_IQ2_S, T.IQ2_XS, 2.3125, "2.5  bpw quantization"),
    FileType("IQ2_M", FT.MOSTLY_IQ2_M, T.IQ2_S, 2.5625, "2.7  bpw quantization"),
    FileType("IQ3_XXS", FT.MOSTLY_IQ3_XXS, T.IQ3_XXS, 3.0625, "3.06 bpw quantization"),
    FileType("IQ3_S", FT.MOSTLY_IQ3_S, T.IQ3_S, 3.4375, "3.44 bpw quantization"),
    FileType("IQ3_M", FT.MOSTLY_IQ3_M, T.IQ3_S, 3.4375, "3.66 bpw quantization mix"),
    FileType("IQ3_XS", FT.MOSTLY_IQ3_XS, T.IQ3_S, 3.4375, "3.3 bpw quantization"),
    FileType("Q3_K_S", FT.MOSTLY_Q3_K_S, T.Q3_K, 3.4375, "3.41G, +1.6321 ppl @ Llama-3-8B"),
    FileType("Q3_K_M", FT.MOSTLY_Q3_K_M, T.Q3_K, 3.4375, "3.74G, +0.6569 ppl @ Llama-3-8B"),
    FileType("Q3_K_L", FT.MOSTLY_Q3_K_L, T.Q3_K, 3.4375, "4.03G, +0.5562 ppl @ Llama-3-8B"),
    FileType("IQ4_NL", FT.MOSTLY_IQ4_NL, T.IQ4_NL, 4.5, "4.50 bpw non-linear quantization"),
    FileType("IQ4_XS", FT.MOSTLY_IQ4_XS, T.IQ4_XS, 4.25, "4.25 bpw non-linear quantization"),
    FileType("Q4_K_S", FT.MOSTLY_Q4_K_S, T.Q4_K, 4.5, "4.37G, +0.2689 ppl @ Llama-3-8B"),
    FileType("Q4_K_M", FT.MOSTLY_Q4_K_M, T.Q4_K, 4.5, "4.58G, +0.1754 ppl @ Llama-3-8B"),
    FileType("Q5_K_S", FT.MOSTLY_Q5_K_S, T.Q5_K, 5.5, "5.21G, +0.1049 ppl @ Llama-3-8B"),
    FileType("Q5_K_M", FT.MOSTLY_Q5_K_M, T.Q5_K, 5.5, "5.33G, +0.0569 ppl @ Llama-3-8B"),
    FileType("IQ1_S", FT.MOSTLY_IQ1_S, T.IQ1_S, 1.5625, "1.56 bpw quantization"),
    FileType("IQ1_M", FT.MOSTLY_IQ1_M, T.IQ1_M, 1.75, "1.75 bpw quantization"),
    FileType("TQ1_0", FT.MOSTLY_TQ1_0, T.TQ1_0, 1.6875, "1.69 bpw ternarization"),
    FileType("TQ2_0", FT.MOSTLY_TQ2_0, T.TQ2_0, 2.0625, "2.06 bpw ternarization"),
    FileType("Q6_K", FT.MOSTLY_Q6_K, T.Q6_K, 6.5625, "6.14G, +0.0217 ppl @ Llama-3-8B"),
    FileType("Q8_0", FT.MOSTLY_Q8_0, T.Q8_0, 8.5, "7.96G, +0.0026 ppl @ Llama-3-8B"),
    FileType("F16", FT.MOSTLY_F16, T.F16, 16.0, "14.00G, +0.0020 ppl @ Mistral-7B"),
    FileType("BF16", FT.MOSTLY_BF16, T.BF16, 16.0, "14.00G, -0.0050 ppl @ Mistral-7B"),
    FileType("F32", FT.ALL_F32, T.F32, 32.0, "26.00G @ 7B"),
]
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
_BY_NAME = {f.name: f for f in FILE_TYPES}
_BY_ID = {int(f.ftype): f for f in FILE_TYPES}

# Tensor types accepted by --output-tensor-type / --token-embedding-type (ggml type names, as llama-quantize)
TENSOR_TYPES = {t.name.lower(): t for t in (T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
                                            T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS,
                                            T.TQ1_0, T.TQ2_0, T.IQ1_S, T.IQ1_M, T.IQ3_XXS, T.IQ3_S,
                                            T.IQ2_XXS, T.IQ2_XS, T.IQ2_S)}


def valid_names() -> str:
    return ", ".join([f.name for f in FILE_TYPES] + list(ALIASES))


def parse_file_type(text: str) -> FileType:
    """A type name (case-insensitive, with the Q3_K/Q4_K/Q5_K aliases) or a numeric llama ftype id."""
    key = text.strip().upper()
    if key.isdigit() and int(key) in _BY_ID:
        return _BY_ID[int(key)]
    key = ALIASES.get(key, key)
    if key in _BY_NAME:
        return _BY_NAME[key]
    raise UserError(f"unknown quantization type {text!r}; valid: {valid_names()}")


def parse_tensor_type(text: str) -> T:
    t = TENSOR_TYPES.get(text.strip().lower())
    if t is None:
        raise UserError(f"unknown tensor type {text!r}; valid: {', '.join(n.replace('_k', '_K') for n in TENSOR_TYPES)}")
    return t


def parse_tensor_type_option(text: str) -> tuple[str, T]:
    """llama-quantize's --tensor-type NAME=TYPE: (the name pattern lowercased, the tensor type)."""
    pattern, eq, type_text = text.partition("=")
    if not eq:
        raise UserError(f"--tensor-type {text!r}: expected PATTERN=TYPE")
    if not pattern:
        raise UserError(f"--tensor-type {text!r}: missing tensor name")
    if not type_text:
        raise UserError(f"--tensor-type {text!r}: missing quantization type")
    return pattern.lower(), parse_tensor_type(type_text)


def type_name(t: T) -> str:
    """ggml's name of a tensor type (q4_K, f16, ...), from the native core's table."""
    return native.TRAITS[int(t)][0] if int(t) in native.TRAITS else t.name.lower()


def is_quantized(t: T) -> bool:
    return t not in (T.F32, T.F16, T.BF16)
