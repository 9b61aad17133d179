"""`toolkit info`: a summary of a GGUF file (metadata, tensor types, size), read with gguf-py's reader."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from gguf import GGUFReader, GGUFValueType
from rich.table import Table

from toolkit.errors import UserError


def _short(field) -> str:
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        n = len(field.data)
        return f"[{n} items]"
    v = field.contents()
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def summary(path: Path) -> tuple[Table, Table, str]:
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        r = GGUFReader(path)
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable GGUF file: {e}") from None
    meta = Table("key", "value", title=f"{path.name}: metadata", title_justify="left")
    for key, field in r.fields.items():
        if not key.startswith("GGUF."):
            meta.add_row(key, _short(field))
    counts: Counter = Counter()
    sizes: Counter = Counter()
    n_params = 0
    for t in r.tensors:
        counts[t.tensor_type.name] += 1
        sizes[t.tensor_type.name] += int(t.n_bytes)
        n_params += int(t.n_elements)
    types = Table("type", "tensors", "MiB", title="tensors", title_justify="left")
    for name, n in counts.most_common():
        types.add_row(name, str(n), f"{sizes[name] / 2**20:.2f}")
    total = sum(sizes.values())
    bpw = 8 * total / n_params if n_params else 0.0
    line = f"{len(r.tensors)} tensors, {n_params / 1e6:.2f} M parameters, {total / 2**20:.2f} MiB ({bpw:.2f} bits per weight)"
    return meta, types, line
