"""A checkpoint's sampling defaults: generation_config.json's entries as the general.sampling.* keys, as llama.cpp's
converter writes them (gguf-py's Metadata.load: each key it knows, when present and not null, in the type its
GGUFWriter.add_sampling_* method gives it; repetition_penalty stands for penalty_repeat). llama.cpp's tools take them
as the defaults of the sampling parameters a user does not set (Qwen-7B-Chat's file says top_p 0.8, top_k 0)."""
from __future__ import annotations

from gguf import GGUFValueType, Keys

from common.errors import UserError
from common.ggufio import KV

# GGUF key, generation_config.json names (the first present wins), GGUF type
FIELDS = (
    (Keys.General.SAMPLING_SEQUENCE, ("sequence",), GGUFValueType.STRING),
    (Keys.General.SAMPLING_TOP_K, ("top_k",), GGUFValueType.INT32),
    (Keys.General.SAMPLING_TOP_P, ("top_p",), GGUFValueType.FLOAT32),
    (Keys.General.SAMPLING_MIN_P, ("min_p",), GGUFValueType.FLOAT32),
    (Keys.General.SAMPLING_XTC_PROBABILITY, ("xtc_probability",), GGUFValueType.FLOAT32),
    (Keys.General.SAMPLING_XTC_THRESHOLD, ("xtc_threshold",), GGUFValueType.FLOAT32),
    (Keys.General.SAMPLING_TEMP, ("temperature",), GGUFValueType.FLOAT32),
    (Keys.General.SAMPLING_PENALTY_LAST_N, ("penalty_last_n",), GGUFValueType.INT32),
    (Keys.General.SAMPLING_PENALTY_REPEAT, ("penalty_repeat", "repetition_penalty"), GGUFValueType.FLOAT32),
    (Keys.General.SAMPLING_MIROSTAT, ("mirostat",), GGUFValueType.INT32),
    (Keys.General.SAMPLING_MIROSTAT_TAU, ("mirostat_tau",), GGUFValueType.FLOAT32),
    (Keys.General.SAMPLING_MIROSTAT_ETA, ("mirostat_eta",), GGUFValueType.FLOAT32),
)
_INT32 = (-2**31, 2**31 - 1)


def sampling_kvs(config: dict) -> list[KV]:
    """The general.sampling.* entries of a generation_config.json, in llama.cpp's order."""
    out = []
    for key, names, vtype in FIELDS:
        name = next((n for n in names if config.get(n) is not None), None)
        if name is not None:
            out.append(KV(key, vtype, _checked(name, config[name], vtype)))
    return out


def _checked(name: str, value: object, vtype: GGUFValueType) -> object:
    where = f"generation_config.json's {name}"
    if vtype == GGUFValueType.STRING:
        if not isinstance(value, str):
            raise UserError(f"{where} is {value!r}, not a string")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where} is {value!r}, not a number")
    if vtype == GGUFValueType.INT32:
        if not isinstance(value, int) or not _INT32[0] <= value <= _INT32[1]:
            raise UserError(f"{where} is {value!r}, not a 32-bit integer")
        return value
    return float(value)
