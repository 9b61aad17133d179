"""`toolkit info`: a summary of a GGUF file (metadata, tensor types, size)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from gguf import GGUFValueType, Keys
from rich.table import Table

from common.ggufio import GGUFFile
from common.ggufsplit import open_gguf, part_counts


def _short(kv) -> str:
    if kv.vtype == GGUFValueType.ARRAY:
        return f"[{len(kv.value)} items]"
    s = str(kv.value)
    return s if len(s) <= 60 else s[:57] + "..."


def model_line(g: GGUFFile) -> str:
    """The architecture, the tokenizer (model, pre-tokenizer) and the context the model was trained for."""
    arch = g.value(Keys.General.ARCHITECTURE) or "?"
    pre = g.value(Keys.Tokenizer.PRE)
    ctx = g.value(Keys.LLM.CONTEXT_LENGTH.format(arch=arch))
    return (f"{arch}, tokenizer {g.value(Keys.Tokenizer.MODEL) or 'none'}"
            f"{f' (pre-tokenizer {pre})' if pre else ''}, trained context {ctx if ctx is not None else '?'}")


def summary(path: Path) -> tuple[Table, Table, str]:
    with open_gguf(path) as g:
        model = model_line(g)
        meta = Table("key", "value", title=f"{path.name}: metadata", title_justify="left")
        for key, kv in g.kv.items():
            meta.add_row(key, _short(kv))
        counts: Counter = Counter()
        sizes: Counter = Counter()
        n_params = 0
        for e in g.tensors:
            counts[e.info.ggml_type.name] += 1
            sizes[e.info.ggml_type.name] += e.info.nbytes
            n_params += int(np.prod(e.info.shape, dtype=np.int64))
        n_tensors = len(g.tensors)
        n_files = len(part_counts(g))
    types = Table("type", "tensors", "MiB", title="tensors", title_justify="left")
    for name, n in counts.most_common():
        types.add_row(name, str(n), f"{sizes[name] / 2**20:.2f}")
    total = sum(sizes.values())
    bpw = 8 * total / n_params if n_params else 0.0
    line = (f"{model}; {n_tensors} tensors, {n_params / 1e6:.2f} M parameters, {total / 2**20:.2f} MiB "
            f"({bpw:.2f} bits per weight){f' in {n_files} split files' if n_files > 1 else ''}")
    return meta, types, line
