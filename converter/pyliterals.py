"""Constants read from a model's own Python files (its `trust_remote_code` tokenizer) without running them.

Some checkpoints state facts only in code: Qwen1's `tokenization_qwen.py` holds its special tokens and its split regex.
Running that code is out of the question (the converter never executes a checkpoint's code); instead its syntax tree is
read and a small set of literal forms is evaluated: strings, numbers, tuples and lists, `+` between them, names bound
earlier to such values, f-strings, `range`, `tuple`/`list`/`enumerate` calls and one-loop comprehensions over them,
within a budget of a million elements for the whole file (so that no file can make it take long or much memory).
Anything else makes the value unknown (left out), never an error deep inside.
"""
from __future__ import annotations

import ast
from pathlib import Path

from common.errors import UserError


class _Unknown(Exception):
    pass


_CALLS = {"tuple": tuple, "list": list, "range": range, "enumerate": enumerate}
# every value built is charged its length; a file whose literals add up to more is not evaluated further (a tokenizer's
# special-token list is a few hundred names)
BUDGET = 1_000_000


class _Budget:
    def __init__(self, total: int):
        self.left = total

    def charge(self, value: object) -> object:
        size = len(value) if isinstance(value, (str, tuple, list, range)) else 1
        self.left -= size
        if self.left < 0:
            raise _Unknown("too large")
        return value


def _eval(node: ast.AST, env: dict[str, object], budget: _Budget) -> object:
    return budget.charge(_eval_node(node, env, budget))


def _eval_node(node: ast.AST, env: dict[str, object], budget: _Budget) -> object:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        raise _Unknown(node.id)
    if isinstance(node, (ast.Tuple, ast.List)):
        items = tuple(_eval(e, env, budget) for e in node.elts)
        return items if isinstance(node, ast.Tuple) else list(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _eval(node.left, env, budget), _eval(node.right, env, budget)
        if type(left) is not type(right) or not isinstance(left, (str, tuple, list, int)):
            raise _Unknown("+")
        return left + right
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.FormattedValue):
                if v.format_spec is not None or v.conversion != -1:
                    raise _Unknown("f-string format")
                parts.append(str(_eval(v.value, env, budget)))
            else:
                parts.append(str(_eval(v, env, budget)))
        return "".join(parts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
        args = [_eval(a, env, budget) for a in node.args]
        kwargs = {k.arg: _eval(k.value, env, budget) for k in node.keywords if k.arg}
        if not all(isinstance(a, (int, tuple, list, range)) for a in args):
            raise _Unknown(node.func.id)
        if node.func.id != "range" and any(isinstance(a, range) for a in args):
            budget.charge(next(a for a in args if isinstance(a, range)))  # about to be materialised
        result = _CALLS[node.func.id](*args, **kwargs)
        return tuple(result) if isinstance(result, enumerate) else result
    if isinstance(node, (ast.GeneratorExp, ast.ListComp)) and len(node.generators) == 1:
        gen = node.generators[0]
        if gen.ifs or gen.is_async or not isinstance(gen.target, ast.Name):
            raise _Unknown("comprehension")
        seq = _eval(gen.iter, env, budget)
        if not isinstance(seq, (range, tuple, list)) or any(isinstance(n, (ast.GeneratorExp, ast.ListComp))
                                                            for n in ast.walk(node.elt)):
            raise _Unknown("comprehension")  # one loop, no nesting
        budget.charge(seq)
        out = [_eval(node.elt, {**env, gen.target.id: item}, budget) for item in seq]
        return out if isinstance(node, ast.ListComp) else tuple(out)
    raise _Unknown(type(node).__name__)


def assigned_values(path: Path) -> dict[str, list[object]]:
    """Every `NAME = <literal>` in the file (module level and inside functions, in source order), evaluated with the
    names assigned before it; names whose values cannot be evaluated are left out."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError) as e:
        raise UserError(f"{path.name} cannot be read as Python: {e}") from None
    budget = _Budget(BUDGET)
    env: dict[str, object] = {}
    found: dict[str, list[object]] = {}
    assigns = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Assign)), key=lambda n: (n.lineno, n.col_offset))
    for node in assigns:
        if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            continue
        try:
            value = _eval(node.value, env, budget)
        except (_Unknown, TypeError, ValueError, RecursionError, OverflowError, MemoryError):
            continue
        name = node.targets[0].id
        env.setdefault(name, value)  # the first binding: later ones sit in other branches
        found.setdefault(name, []).append(value)
    return found
