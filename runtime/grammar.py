"""llama.cpp's GBNF grammars: the parser, a matcher over text, and the per-step token mask for constrained sampling.

The format is llama.cpp's (`grammars/README.md`): rules `name ::= alternatives`, alternatives separated by `|`,
sequences of string literals, character classes (`[a-z]`, `[^"\\]`), `.` (any character), rule references,
parenthesised groups, the repetitions `*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}`, escapes `\\xXX`, `\\uXXXX`,
`\\UXXXXXXXX`, `\\t`, `\\r`, `\\n`, `\\\\`, `\\"`, `\\[`, `\\]`, `\\-`, `#` comments, tokens `<[id]>`, `<text>` and
their negations `!<[id]>`, `!<text>`, and generation starts at `root`.

The grammar compiles as llama.cpp's does: every rule becomes a flat list of elements (alternatives separated by ALT,
ended by END), groups and repetitions become generated rules (`x*` → `x_1 ::= x x_1 |`), so the same grammar accepts
the same language in the same way. A parse state is a set of *stacks*, each a tuple of element positions with the
next element to match on top (the end); an empty stack means the grammar is complete.

Matching works on Unicode code points, decoded from the tokens' bytes exactly as llama.cpp decodes them (a token may
end inside a UTF-8 sequence: it is allowed when a character starting with those bits could come next).

Masking (`GrammarConstraint`) is a walk of a trie of the vocabulary's token byte strings, one level of the trie at a
time with numpy: each trie node gets a parser state id; a table of state transitions per byte (`_StateTable`) is
filled lazily, so after the first steps a level of the trie is two array look-ups. Masks are kept per start state, so
a state met again (inside a JSON string, between array items, ...) costs a dictionary look-up.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from common.errors import UserError
from common.textfile import read_text

# element kinds (llama.cpp's llama_gretype)
END, ALT, RULE_REF, CHAR, CHAR_NOT, CHAR_RNG_UPPER, CHAR_ALT, CHAR_ANY, TOKEN, TOKEN_NOT = range(10)

MAX_REPETITION_THRESHOLD = 2000  # llama.cpp's limit on repetition counts and the rules they generate

_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


class GrammarError(UserError):
    """A grammar that cannot be used: a syntax error (with its line and column), an undefined rule, no start rule,
    left recursion, a token that is not in the vocabulary."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        self.line, self.column = line, column
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"grammar: {where}{message}")


@dataclass(frozen=True)
class TokenRef:
    """A token element before it meets a vocabulary: its id (`<[id]>`) or its text (`<think>`)."""
    id: int | None
    text: str | None


# ---------------------------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------------------------
def _is_word_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "-")


class _Parser:
    """llama.cpp's llama_grammar_parser over a Python string: rules as lists of (kind, value) elements."""

    def __init__(self, src: str):
        self.src = src
        self.symbol_ids: dict[str, int] = {}
        self.rules: list[list[tuple[int, object]]] = []
        self.first_use: dict[int, int] = {}  # rule id → source offset of its first mention (for errors)

    # -- positions and errors -----------------------------------------------------------------------------------
    def error(self, message: str, pos: int) -> GrammarError:
        line = self.src.count("\n", 0, pos) + 1
        column = pos - (self.src.rfind("\n", 0, pos) + 1) + 1
        return GrammarError(message, line, column)

    def at(self, pos: int) -> str:
        return self.src[pos] if pos < len(self.src) else ""

    def what_is_at(self, pos: int) -> str:
        rest = self.src[pos:pos + 20].split("\n")[0]
        return repr(rest) if rest else "end of line" if pos < len(self.src) else "end of input"

    # -- symbols --------------------------------------------------------------------------------------------------
    def symbol_id(self, name: str, pos: int) -> int:
        if name not in self.symbol_ids:
            self.symbol_ids[name] = len(self.symbol_ids)
            self.first_use[self.symbol_ids[name]] = pos
        return self.symbol_ids[name]

    def generate_symbol_id(self, base: str) -> int:
        new_id = len(self.symbol_ids)
        self.symbol_ids[f"{base}_{new_id}"] = new_id
        return new_id

    def add_rule(self, rule_id: int, rule: list) -> None:
        while len(self.rules) <= rule_id:
            self.rules.append([])
        self.rules[rule_id] = rule

    # -- lexical pieces -------------------------------------------------------------------------------------------
    def space(self, pos: int, newline_ok: bool) -> int:
        src, n = self.src, len(self.src)
        while pos < n and (src[pos] in " \t#" or (newline_ok and src[pos] in "\r\n")):
            if src[pos] == "#":
                while pos < n and src[pos] not in "\r\n":
                    pos += 1
            else:
                pos += 1
        return pos

    def name(self, pos: int) -> int:
        end = pos
        while end < len(self.src) and _is_word_char(self.src[end]):
            end += 1
        if end == pos:
            raise self.error(f"expecting a rule name, found {self.what_is_at(pos)}", pos)
        return end

    def integer(self, pos: int) -> tuple[int, int]:
        end = pos
        while end < len(self.src) and self.src[end].isascii() and self.src[end].isdigit():
            end += 1
        if end == pos:
            raise self.error(f"expecting an integer, found {self.what_is_at(pos)}", pos)
        return int(self.src[pos:end]), end

    def char(self, pos: int) -> tuple[int, int]:
        """One character of a literal or class, escapes decoded: (code point, next position)."""
        c = self.at(pos)
        if not c:
            raise self.error("unexpected end of input", pos)
        if c != "\\":
            return ord(c), pos + 1
        e = self.at(pos + 1)
        if e in _HEX_DIGITS:
            size = _HEX_DIGITS[e]
            digits = self.src[pos + 2:pos + 2 + size]
            if len(digits) != size or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"expecting {size} hex digits after \\{e}", pos)
            return int(digits, 16), pos + 2 + size
        if e in _ESCAPES:
            return ord(_ESCAPES[e]), pos + 2
        raise self.error(f"unknown escape \\{e}" if e else "unexpected end of input", pos)

    # -- grammar structure ----------------------------------------------------------------------------------------
    def parse(self) -> None:
        pos = self.space(0, True)
        while pos < len(self.src):
            pos = self.rule(pos)
        for rule_id, rule in enumerate(self.rules + [[]] * (len(self.symbol_ids) - len(self.rules))):
            if not rule:
                name = next(k for k, v in self.symbol_ids.items() if v == rule_id)
                raise self.error(f"undefined rule {name!r}", self.first_use[rule_id])

    def rule(self, pos: int) -> int:
        name_end = self.name(pos)
        rule_id = self.symbol_id(self.src[pos:name_end], pos)
        p = self.space(name_end, False)
        if self.src[p:p + 3] != "::=":
            raise self.error(f"expecting '::=', found {self.what_is_at(p)}", p)
        p = self.alternates(self.space(p + 3, True), self.src[pos:name_end], rule_id, False)
        if self.at(p) == "\r":
            p += 2 if self.at(p + 1) == "\n" else 1
        elif self.at(p) == "\n":
            p += 1
        elif p < len(self.src):
            raise self.error(f"expecting a newline or the end, found {self.what_is_at(p)}", p)
        return self.space(p, True)

    def alternates(self, pos: int, rule_name: str, rule_id: int, nested: bool) -> int:
        rule: list = []
        pos = self.sequence(pos, rule_name, rule, nested)
        while self.at(pos) == "|":
            rule.append((ALT, 0))
            pos = self.sequence(self.space(pos + 1, True), rule_name, rule, nested)
        rule.append((END, 0))
        self.add_rule(rule_id, rule)
        return pos

    def sequence(self, pos: int, rule_name: str, rule: list, nested: bool) -> int:
        last_sym_start = len(rule)
        n_prev_rules = 1
        while pos < len(self.src):
            c = self.src[pos]
            start = pos
            if c == '"':
                pos += 1
                last_sym_start, n_prev_rules = len(rule), 1
                while self.at(pos) != '"':
                    if not self.at(pos):
                        raise self.error("unterminated string literal", start)
                    cp, pos = self.char(pos)
                    rule.append((CHAR, cp))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                last_sym_start, n_prev_rules = len(rule), 1
                pos = self.space(self.char_class(pos + 1, rule, start), nested)
            elif c in "<!":
                kind = TOKEN_NOT if c == "!" else TOKEN
                ref, pos = self.token(pos + 1 if c == "!" else pos)
                last_sym_start, n_prev_rules = len(rule), 1
                rule.append((kind, ref))
                pos = self.space(pos, nested)
            elif _is_word_char(c):
                end = self.name(pos)
                ref_id = self.symbol_id(self.src[pos:end], pos)
                last_sym_start, n_prev_rules = len(rule), 1
                rule.append((RULE_REF, ref_id))
                pos = self.space(end, nested)
            elif c == "(":
                n_before = len(self.symbol_ids)
                sub_id = self.generate_symbol_id(rule_name)
                pos = self.alternates(self.space(pos + 1, True), rule_name, sub_id, True)
                n_prev_rules = max(1, len(self.symbol_ids) - n_before)
                last_sym_start = len(rule)
                rule.append((RULE_REF, sub_id))
                if self.at(pos) != ")":
                    raise self.error(f"expecting ')' to close the group opened here, found {self.what_is_at(pos)}",
                                     start)
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last_sym_start, n_prev_rules = len(rule), 1
                rule.append((CHAR_ANY, 0))
                pos = self.space(pos + 1, nested)
            elif c in "*+?{":
                if last_sym_start == len(rule):
                    raise self.error(f"expecting something before {c!r} to repeat", pos)
                low, high, pos = self.repetition_bounds(pos, nested)
                n_prev_rules = self.repeat(rule, rule_name, last_sym_start, n_prev_rules, low, high, start)
            else:
                break
        return pos

    def char_class(self, pos: int, rule: list, start: int) -> int:
        kind = CHAR
        if self.at(pos) == "^":
            pos, kind = pos + 1, CHAR_NOT
        first = len(rule)
        while self.at(pos) != "]":
            if not self.at(pos):
                raise self.error("unterminated character class", start)
            cp, pos = self.char(pos)
            rule.append((CHAR_ALT if len(rule) > first else kind, cp))
            if self.at(pos) == "-" and self.at(pos + 1) != "]":
                if not self.at(pos + 1):
                    raise self.error("unterminated character class", start)
                upper, pos = self.char(pos + 1)
                if upper < cp:
                    raise self.error(f"empty range {chr(cp)!r}-{chr(upper)!r} in a character class", start)
                rule.append((CHAR_RNG_UPPER, upper))
        if len(rule) == first:  # llama.cpp would let it match the empty string
            raise self.error("empty character class", start)
        return pos + 1

    def token(self, pos: int) -> tuple[TokenRef, int]:
        if self.at(pos) != "<":
            raise self.error(f"expecting '<' after '!', found {self.what_is_at(pos)}", pos)
        if self.at(pos + 1) == "[":
            token_id, p = self.integer(pos + 2)
            if self.src[p:p + 2] != "]>":
                raise self.error(f"expecting ']>', found {self.what_is_at(p)}", p)
            return TokenRef(token_id, None), p + 2
        end = self.src.find(">", pos + 1)
        if end < 0:
            raise self.error("expecting '>' to close the token", pos)
        return TokenRef(None, self.src[pos:end + 1]), end + 1

    def repetition_bounds(self, pos: int, nested: bool) -> tuple[int, int | None, int]:
        """The bounds of `*`, `+`, `?` or `{m}`, `{m,}`, `{m,n}` at pos: (min, max or None, next position)."""
        c = self.src[pos]
        if c != "{":
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[c] + (self.space(pos + 1, nested),)
        start = pos
        low, pos = self.integer(self.space(pos + 1, nested))
        pos = self.space(pos, nested)
        high: int | None = low
        if self.at(pos) == ",":
            pos = self.space(pos + 1, nested)
            high = None
            if self.at(pos).isascii() and self.at(pos).isdigit():
                high, pos = self.integer(pos)
                pos = self.space(pos, nested)
        if self.at(pos) != "}":
            raise self.error(f"expecting '}}' or ',' in a repetition, found {self.what_is_at(pos)}", pos)
        if low > MAX_REPETITION_THRESHOLD:
            raise self.error(f"repetition count {low} exceeds {MAX_REPETITION_THRESHOLD}", start)
        if high is not None and high < low:
            raise self.error(f"repetition {{{low},{high}}}: the maximum is below the minimum", start)
        if high is not None and high > MAX_REPETITION_THRESHOLD:
            high = None  # as llama.cpp: a huge maximum means no maximum
        return low, high, self.space(pos + 1, nested)

    def repeat(self, rule: list, rule_name: str, last_sym_start: int, n_prev_rules: int, low: int,
               high: int | None, pos: int) -> int:
        """Rewrite the last symbol of `rule` as llama.cpp does: S{m,n} → S…S (m times) then a chain of n-m
        optional rules; S{m,} → S…S then `S' ::= S S' |`. Returns the new count of repeated rules."""
        prev = rule[last_sym_start:]
        total = high if high is not None and high > 0 else max(low, 1)
        if n_prev_rules * total > MAX_REPETITION_THRESHOLD:
            raise self.error("the repetition generates too many rules (over "
                             f"{MAX_REPETITION_THRESHOLD}); reduce the count or nest fewer repetitions", pos)
        del rule[last_sym_start:]
        if low > 0:
            rule.extend(prev * low)
        n_opt = 1 if high is None else high - low
        last_rec_id = 0
        for i in range(n_opt):
            rec_id = self.generate_symbol_id(rule_name)
            rec = list(prev)
            if i > 0 or high is None:
                rec.append((RULE_REF, rec_id if high is None else last_rec_id))
            rec += [(ALT, 0), (END, 0)]
            self.add_rule(rec_id, rec)
            last_rec_id = rec_id
        if n_opt > 0:
            rule.append((RULE_REF, last_rec_id))
        return n_prev_rules * total


# ---------------------------------------------------------------------------------------------------------------
# the compiled grammar and its stacks
# ---------------------------------------------------------------------------------------------------------------
Stack = tuple  # of element positions, the next element on top (last)
Stacks = frozenset  # of Stack


@dataclass(frozen=True)
class CharClass:
    """A character element and its alternatives: inclusive code point ranges, negated or not, or any character."""
    ranges: tuple[tuple[int, int], ...]
    negated: bool
    any: bool
    next_pos: int  # the element after the class

    def matches(self, cp: int) -> bool:
        if self.any:
            return True
        return any(lo <= cp <= hi for lo, hi in self.ranges) != self.negated

    def matches_some_of(self, low: int, high: int) -> bool:
        """Whether some code point in [low, high] matches (exact)."""
        if self.any:
            return True
        if not self.negated:
            return any(lo <= high and low <= hi for lo, hi in self.ranges)
        nxt = low  # the first code point not yet known to be excluded
        for lo, hi in sorted(self.ranges):
            if lo > nxt:
                break
            nxt = max(nxt, hi + 1)
        return nxt <= high

    def covers(self, low: int, high: int) -> bool:
        """Whether every code point in [low, high] matches."""
        if self.any:
            return True
        if self.negated:
            return not any(lo <= high and low <= hi for lo, hi in self.ranges)
        nxt = low
        for lo, hi in sorted(self.ranges):
            if lo > nxt:
                break
            nxt = max(nxt, hi + 1)
        return nxt > high

    def matches_partial(self, value: int, n_remain: int) -> bool:
        """llama.cpp's llama_grammar_match_partial_char: may a character whose UTF-8 encoding starts with these bits
        (`n_remain` continuation bytes still to come) match? As llama.cpp, a negated class rejects the partial
        character as soon as one excluded range overlaps the characters it may become."""
        if n_remain < 0 or (n_remain == 1 and value < 2):
            return False
        low = value << (n_remain * 6)
        high = low | ((1 << (n_remain * 6)) - 1)
        if low == 0:
            low = {2: 1 << 11, 3: 1 << 16}.get(n_remain, low)
        if self.any:
            return True
        overlaps = any(lo <= high and low <= hi for lo, hi in self.ranges)
        return overlaps != self.negated


class Grammar:
    """A parsed GBNF grammar: its rules as one flat element array, and the stack operations of llama.cpp's matcher."""

    def __init__(self, rules: Sequence[Sequence[tuple[int, object]]], symbol_ids: dict[str, int], root: str,
                 source: str = ""):
        if root not in symbol_ids:
            raise GrammarError(f"no start rule {root!r} (rules: {', '.join(sorted(symbol_ids)[:10])})")
        self.source = source
        self.symbol_ids = dict(symbol_ids)
        self.root_id = symbol_ids[root]
        self.elements: list[tuple[int, object]] = []
        self.rule_start: list[int] = []
        for rule in rules:
            self.rule_start.append(len(self.elements))
            self.elements.extend(rule)
        self.classes: dict[int, CharClass] = self._char_classes()
        self.token_refs: dict[int, TokenRef] = {i: v for i, (k, v) in enumerate(self.elements)
                                                if k in (TOKEN, TOKEN_NOT)}
        self._check_left_recursion()
        self._advanced: dict[Stack, tuple[Stack, ...]] = {}
        self._accepted: dict[tuple[Stacks, int], Stacks] = {}
        self.initial: Stacks = self._initial_stacks()

    @classmethod
    def parse(cls, text: str, root: str = "root") -> "Grammar":
        parser = _Parser(text)
        parser.parse()
        if not parser.rules:
            raise GrammarError("the grammar has no rules")
        return cls(parser.rules, parser.symbol_ids, root, text)

    # -- compilation ----------------------------------------------------------------------------------------------
    def _char_classes(self) -> dict[int, CharClass]:
        classes = {}
        els = self.elements
        for pos, (kind, value) in enumerate(els):
            if kind not in (CHAR, CHAR_NOT, CHAR_ANY):
                continue
            ranges, p = [], pos
            while True:
                lo = els[p][1]
                if els[p + 1][0] == CHAR_RNG_UPPER:
                    ranges.append((lo, els[p + 1][1]))
                    p += 2
                else:
                    if els[p][0] != CHAR_ANY:
                        ranges.append((lo, lo))
                    p += 1
                if els[p][0] != CHAR_ALT:
                    break
            classes[pos] = CharClass(tuple(ranges), kind == CHAR_NOT, kind == CHAR_ANY, p)
        return classes

    def _alternatives(self, rule_id: int) -> list[list[tuple[int, object]]]:
        alts, cur, pos = [], [], self.rule_start[rule_id]
        while True:
            kind, value = self.elements[pos]
            if kind in (ALT, END):
                alts.append(cur)
                cur = []
                if kind == END:
                    return alts
            else:
                cur.append((kind, value))
            pos += 1

    def _check_left_recursion(self) -> None:
        """GrammarError when a rule can reach itself without consuming a character (llama.cpp refuses these too;
        the matcher would loop on them)."""
        n = len(self.rule_start)
        nullable = [False] * n
        changed = True
        while changed:  # fixpoint: which rules can match the empty string
            changed = False
            for r in range(n):
                if not nullable[r] and any(all(k == RULE_REF and nullable[v] for k, v in alt)
                                           for alt in self._alternatives(r)):
                    nullable[r] = changed = True
        first_refs = [set() for _ in range(n)]  # rules that can be entered at the start of each rule
        for r in range(n):
            for alt in self._alternatives(r):
                for kind, value in alt:
                    if kind != RULE_REF:
                        break
                    first_refs[r].add(value)
                    if not nullable[value]:
                        break
        names = {v: k for k, v in self.symbol_ids.items()}
        for r in range(n):
            seen, todo = set(), list(first_refs[r])
            while todo:
                x = todo.pop()
                if x == r:
                    raise GrammarError(f"left recursion in rule {names.get(r, r)!r}: it can reach itself before "
                                       "matching any character (rewrite it right-recursive, e.g. with `*`)")
                if x not in seen:
                    seen.add(x)
                    todo.extend(first_refs[x])

    def _is_end(self, pos: int) -> bool:
        return self.elements[pos][0] in (END, ALT)

    def _initial_stacks(self) -> Stacks:
        out: set[Stack] = set()
        pos = self.rule_start[self.root_id]
        while True:
            out.update(self.advance(() if self._is_end(pos) else (pos,)))
            while not self._is_end(pos):
                pos += 1
            if self.elements[pos][0] == END:
                break
            pos += 1
        return frozenset(out)

    # -- stack operations -----------------------------------------------------------------------------------------
    def advance(self, stack: Stack) -> tuple[Stack, ...]:
        """llama_grammar_advance_stack: expand rule references on top until every stack has a character or token
        element on top, or is empty (the grammar complete)."""
        done = self._advanced.get(stack)
        if done is not None:
            return done
        out: list[Stack] = []
        seen: set[Stack] = set()
        todo = [stack]
        els = self.elements
        while todo:
            cur = todo.pop()
            if cur in seen:
                continue
            seen.add(cur)
            if not cur or els[cur[-1]][0] != RULE_REF:
                out.append(cur)
                continue
            pos = cur[-1]
            base = cur[:-1] if self._is_end(pos + 1) else cur[:-1] + (pos + 1,)
            sub = self.rule_start[els[pos][1]]
            while True:
                todo.append(base if self._is_end(sub) else base + (sub,))
                while not self._is_end(sub):
                    sub += 1
                if els[sub][0] == END:
                    break
                sub += 1
        result = tuple(dict.fromkeys(out))
        self._advanced[stack] = result
        return result

    def accept_char(self, stacks: Stacks, cp: int) -> Stacks:
        """The stacks after the character `cp` (empty: the character is not allowed)."""
        key = (stacks, cp)
        done = self._accepted.get(key)
        if done is not None:
            return done
        out: set[Stack] = set()
        for stack in stacks:
            cls = self.classes.get(stack[-1]) if stack else None
            if cls is not None and cls.matches(cp):
                rest = stack[:-1] if self._is_end(cls.next_pos) else stack[:-1] + (cls.next_pos,)
                out.update(self.advance(rest))
        result = frozenset(out)
        if len(self._accepted) < 1_000_000:
            self._accepted[key] = result
        return result

    def accept_matched(self, matched: Stacks) -> Stacks:
        """The stacks after a character that the top of each stack in `matched` matches."""
        done = self._accepted.get(matched)
        if done is not None:
            return done
        out: set[Stack] = set()
        for stack in matched:
            nxt = self.classes[stack[-1]].next_pos
            out.update(self.advance(stack[:-1] if self._is_end(nxt) else stack[:-1] + (nxt,)))
        result = frozenset(out)
        self._accepted[matched] = result
        return result

    def accept_token_element(self, stacks: Stacks, token_id: int, resolve) -> Stacks:
        """The stacks after a whole token matched by a token element (`<[id]>`, `!<[id]>`) on top."""
        out: set[Stack] = set()
        for stack in stacks:
            if not stack or stack[-1] not in self.token_refs:
                continue
            pos = stack[-1]
            matches = (resolve(self.token_refs[pos]) == token_id) == (self.elements[pos][0] == TOKEN)
            if matches:
                nxt = pos + 1
                out.update(self.advance(stack[:-1] if self._is_end(nxt) else stack[:-1] + (nxt,)))
        return frozenset(out)

    @staticmethod
    def complete(stacks: Stacks) -> bool:
        return () in stacks

    def _after(self, text: str) -> Stacks | None:
        """The parser's stacks after `text` from the start, or None once no stack survives a character."""
        stacks = self.initial
        for c in text:
            stacks = self.accept_char(stacks, ord(c))
            if not stacks:
                return None
        return stacks

    def accepts(self, text: str) -> bool:
        """Whether the whole of `text` is in the grammar's language."""
        stacks = self._after(text)
        return stacks is not None and self.complete(stacks)

    def accepts_prefix(self, text: str) -> bool:
        """Whether `text` can be continued into a sentence of the grammar."""
        return self._after(text) is not None


# ---------------------------------------------------------------------------------------------------------------
# UTF-8 as llama.cpp's decode_utf8 reads it
# ---------------------------------------------------------------------------------------------------------------
_UTF8_LEN = (1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4)  # by the lead byte's high nibble; 0: invalid lead


@dataclass(frozen=True)
class _State:
    """A parser state between two bytes: the stacks after the last whole character, and a partly read character
    (`n_remain` continuation bytes to come; `carried`: begun in an earlier token, whose continuation bytes
    llama.cpp checks, while inside one token it takes any byte as a continuation)."""
    stacks: Stacks
    value: int = 0
    n_remain: int = 0
    carried: bool = False
    matched: Stacks | None = None  # set instead of `value` when every character it may become matches these stacks


def _whole_characters(piece: bytes) -> bool:
    """Whether a token element can match this token in llama.cpp: its piece decodes (as decode_utf8 reads it) with
    no invalid lead byte, and to at least one whole character when it ends inside one."""
    i = 0
    while i < len(piece):
        if piece[i] == 0:
            return i > 0  # a C string ends here
        n = _UTF8_LEN[piece[i] >> 4]
        if n == 0:
            return False
        if i + n > len(piece):
            return i > 0
        i += n
    return bool(piece)


def _carried(state: _State) -> _State:
    """The state as the next token starts in it: a partial character is then carried over."""
    return replace(state, carried=state.n_remain > 0)


class _StateTable:
    """Parser states interned as small ints, with a lazily filled byte-transition table `next[state, byte]`
    (-1: not computed yet; state 0 is the dead state) and `end_ok[state]`: a token may end in this state."""

    DEAD = 0

    def __init__(self, grammar: Grammar):
        self.grammar = grammar
        self.states: list[_State | None] = [None]
        self.ids: dict[_State, int] = {}
        self.next = np.zeros((64, 256), dtype=np.int32)
        self.next[1:] = -1
        self.end_ok = np.zeros(64, dtype=bool)

    def __len__(self) -> int:
        return len(self.states)

    def intern(self, state: _State) -> int:
        sid = self.ids.get(state)
        if sid is not None:
            return sid
        sid = len(self.states)
        if sid >= self.next.shape[0]:
            grow = np.full((self.next.shape[0], 256), -1, dtype=np.int32)
            self.next = np.concatenate([self.next, grow])
            self.end_ok = np.concatenate([self.end_ok, np.zeros(grow.shape[0], dtype=bool)])
        self.states.append(state)
        self.ids[state] = sid
        self.end_ok[sid] = self._may_end(state)
        return sid

    def _may_end(self, state: _State) -> bool:
        if state.n_remain == 0:
            return True
        if state.matched is not None:
            return bool(state.matched)
        classes = self.grammar.classes
        return any(s and s[-1] in classes and classes[s[-1]].matches_partial(state.value, state.n_remain)
                   for s in state.stacks)

    def _viable(self, stacks: Stacks, value: int, n_remain: int) -> bool:
        """Whether some character starting with these bits could match a stack (exact; prunes the walk only)."""
        low, high = value << (n_remain * 6), ((value + 1) << (n_remain * 6)) - 1
        classes = self.grammar.classes
        return any(s and s[-1] in classes and classes[s[-1]].matches_some_of(low, high) for s in stacks)

    def step(self, sid: int, byte: int) -> int:
        """The state after `byte` in state `sid` (computed and stored in the table)."""
        nxt = self._transition(self.states[sid], byte) if sid != self.DEAD else self.DEAD
        self.next[sid, byte] = nxt
        return nxt

    def _transition(self, st: _State, b: int) -> int:
        if st.n_remain > 0 and st.carried and b >> 6 != 2:
            return self.DEAD
        if st.matched is not None:
            return self._uniform_transition(st)
        if st.n_remain > 0:
            value, n_remain = (st.value << 6) | (b & 0x3F), st.n_remain - 1
        elif b == 0:  # llama.cpp reads pieces as C strings
            return self.DEAD
        else:
            n_remain = _UTF8_LEN[b >> 4] - 1
            if n_remain < 0:
                return self.DEAD
            value = b & ((1 << (7 - n_remain)) - 1)
        if n_remain == 0:
            stacks = self.grammar.accept_char(st.stacks, value)
            return self.intern(_State(stacks)) if stacks else self.DEAD
        if not self._viable(st.stacks, value, n_remain):
            return self.DEAD
        carried = st.carried and st.n_remain > 0
        matched = self._uniform_match(st.stacks, value, n_remain)
        if matched is not None:
            return self.intern(_State(st.stacks, 0, n_remain, carried, matched))
        return self.intern(_State(st.stacks, value, n_remain, carried))

    def _uniform_transition(self, st: _State) -> int:
        """A continuation byte in a state whose partial character matches the same stacks whatever it becomes."""
        if st.n_remain > 1:
            return self.intern(_State(st.stacks, 0, st.n_remain - 1, st.carried, st.matched))
        stacks = self.grammar.accept_matched(st.matched)
        return self.intern(_State(stacks)) if stacks else self.DEAD

    def _uniform_match(self, stacks: Stacks, value: int, n_remain: int) -> Stacks | None:
        """The stacks whose top matches every character this partial one may become, when each other stack's top
        matches none of them; None otherwise (or for the overlong lead bytes llama.cpp treats apart)."""
        if value < 2:
            return None
        low, high = value << (n_remain * 6), ((value + 1) << (n_remain * 6)) - 1
        classes = self.grammar.classes
        matched = []
        for s in stacks:
            cls = classes.get(s[-1]) if s else None
            if cls is None or not cls.matches_some_of(low, high):
                continue
            if not cls.covers(low, high):
                return None
            matched.append(s)
        return frozenset(matched)

    def fill(self, sids: np.ndarray, byts: np.ndarray) -> None:
        """Compute the missing transitions among the pairs (sids[i], byts[i])."""
        for key in np.unique(sids.astype(np.int64) * 256 + byts):
            self.step(int(key) >> 8, int(key) & 255)


# ---------------------------------------------------------------------------------------------------------------
# the vocabulary trie
# ---------------------------------------------------------------------------------------------------------------
class TokenTrie:
    """The tokens' byte strings as a trie stored level by level: the nodes of depth d+1 follow those of depth d,
    the children of a node are contiguous and in the order of their parents. Node 0 is the empty prefix."""

    def __init__(self, pieces: Sequence[bytes]):
        order = sorted((p, i) for i, p in enumerate(pieces) if p)
        parent, byte, depth = [-1], [0], [0]
        path: list[int] = [0]  # node ids of the current piece's prefixes (path[k]: prefix of length k)
        prev = b""
        token_node = np.full(len(pieces), -1, dtype=np.int64)
        for piece, tid in order:
            common = 0
            limit = min(len(prev), len(piece))
            while common < limit and prev[common] == piece[common]:
                common += 1
            del path[common + 1:]
            for k in range(common, len(piece)):
                parent.append(path[k])
                byte.append(piece[k])
                depth.append(k + 1)
                path.append(len(parent) - 1)
            token_node[tid] = path[len(piece)]
            prev = piece
        depth_a = np.asarray(depth, dtype=np.int64)
        bfs = np.argsort(depth_a, kind="stable")  # DFS creation order within each level
        new_id = np.empty_like(bfs)
        new_id[bfs] = np.arange(bfs.size)
        parent_a = np.asarray(parent, dtype=np.int64)[bfs]
        self.parent = np.where(parent_a >= 0, new_id[np.maximum(parent_a, 0)], -1)
        self.byte = np.asarray(byte, dtype=np.uint8)[bfs]
        self.n_nodes = bfs.size
        counts = np.bincount(self.parent[1:], minlength=self.n_nodes)
        self.child_count = counts.astype(np.int64)
        first = np.full(self.n_nodes, self.n_nodes, dtype=np.int64)
        np.minimum.at(first, self.parent[1:], np.arange(1, self.n_nodes))
        self.child_start = first
        self.token_node = np.where(token_node >= 0, new_id[np.maximum(token_node, 0)], -1)
        self.n_tokens = len(pieces)

    def children(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The children of `nodes`: (child node ids, the index in `nodes` of each child's parent)."""
        counts = self.child_count[nodes]
        total = int(counts.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        owner = np.repeat(np.arange(nodes.size), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        return self.child_start[nodes][owner] + offsets, owner


_TRIES: dict[int, tuple[object, TokenTrie, list[bytes]]] = {}


def vocabulary_trie(tokenizer) -> tuple[TokenTrie, list[bytes]]:
    """The trie of a tokenizer's token pieces (as llama.cpp's token_to_piece with special tokens rendered), built
    once per tokenizer object."""
    entry = _TRIES.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        pieces = [tokenizer.piece_bytes(t, special=True) for t in range(tokenizer.n_vocab)]
        entry = (tokenizer, TokenTrie(pieces), pieces)
        _TRIES[id(tokenizer)] = entry
    return entry[1], entry[2]


# ---------------------------------------------------------------------------------------------------------------
# the constraint the sampler applies
# ---------------------------------------------------------------------------------------------------------------
class GrammarConstraint:
    """The tokens a grammar allows next, for one generation: `mask()` before sampling, `accept(token)` after.

    As llama.cpp's grammar sampler: an end-of-generation token is allowed only when the grammar is complete; a
    token with an empty piece is never allowed; other tokens are allowed when their bytes continue the grammar
    (a trailing incomplete UTF-8 sequence included)."""

    def __init__(self, grammar: Grammar, tokenizer, *, mask_cache: int = 64, max_states: int = 200_000):
        self.grammar = grammar
        self.trie, self.pieces = vocabulary_trie(tokenizer)
        self.n_vocab = len(self.pieces)
        self.eog = np.zeros(self.n_vocab, dtype=bool)
        self.eog[[t for t in tokenizer.eog_ids if 0 <= t < self.n_vocab]] = True
        self._token_ids = {ref: self._resolve_token(tokenizer, ref) for ref in grammar.token_refs.values()}
        self._whole: np.ndarray | None = None
        self.max_states = max_states
        self.mask_cache_size = mask_cache
        self._reset_tables()
        self.state = _State(grammar.initial)

    @classmethod
    def from_text(cls, text: str, tokenizer, root: str = "root") -> "GrammarConstraint":
        return cls(Grammar.parse(text, root), tokenizer)

    @staticmethod
    def _resolve_token(tokenizer, ref: TokenRef) -> int:
        if ref.id is not None:
            if not 0 <= ref.id < tokenizer.n_vocab:
                raise GrammarError(f"token <[{ref.id}]> is outside the vocabulary of {tokenizer.n_vocab}")
            return ref.id
        ids = tokenizer.encode(ref.text, add_bos=False, parse_special=True)
        if len(ids) != 1:
            raise GrammarError(f"token {ref.text} is not one token in this vocabulary ({len(ids)} tokens)")
        return ids[0]

    def _reset_tables(self) -> None:
        self.table = _StateTable(self.grammar)
        self._masks: OrderedDict[int, np.ndarray] = OrderedDict()

    # -- state ----------------------------------------------------------------------------------------------------
    def is_complete(self) -> bool:
        """Whether the text so far is a whole sentence of the grammar (an end-of-generation token is allowed)."""
        return self.state.n_remain == 0 and Grammar.complete(self.state.stacks)

    def accept(self, token_id: int) -> None:
        """Advance past a sampled token; GrammarError if the grammar does not allow it."""
        if self.eog[token_id]:
            if not self.is_complete():
                raise GrammarError("an end-of-generation token before the grammar is complete")
            return
        after = self._after_token(token_id)
        if after is None:
            raise GrammarError(f"token {token_id} ({self.pieces[token_id]!r}) is not allowed by the grammar here")
        self.state = after

    def allows(self, token_id: int) -> bool:
        """Whether one token is allowed now (cheaper than the whole mask)."""
        if self.eog[token_id]:
            return self.is_complete()
        return self._after_token(token_id) is not None

    def _after_token(self, token_id: int) -> _State | None:
        piece = self.pieces[token_id]
        stacks = self.state.stacks
        by_element = self.grammar.token_refs and self.state.n_remain == 0 and self._whole_characters()[token_id]
        tok_stacks = self.grammar.accept_token_element(stacks, token_id, self._token_ids.__getitem__) \
            if by_element else frozenset()
        byte_state = self._walk_bytes(piece) if piece else None
        if tok_stacks and byte_state is not None and byte_state.n_remain == 0:
            return _State(byte_state.stacks | tok_stacks)
        if tok_stacks:
            return _State(tok_stacks)
        return byte_state

    def _walk_bytes(self, piece: bytes) -> _State | None:
        table = self.table
        sid = table.intern(self._start_state())
        for b in piece:
            nxt = int(table.next[sid, b])
            sid = nxt if nxt >= 0 else table.step(sid, b)
            if sid == table.DEAD:
                return None
        if not table.end_ok[sid]:
            return None
        return _carried(table.states[sid])

    def _start_state(self) -> _State:
        return _carried(self.state)

    # -- the mask -------------------------------------------------------------------------------------------------
    def mask(self) -> np.ndarray:
        """Boolean array over the vocabulary: True for the tokens allowed next."""
        if len(self.table) > self.max_states:
            self._reset_tables()
        sid = self.table.intern(self._start_state())
        cached = self._masks.get(sid)
        if cached is not None:
            self._masks.move_to_end(sid)
            return cached
        allowed = self._walk_trie(sid)
        if self.grammar.token_refs and self.state.n_remain == 0:
            allowed |= self._token_element_mask()
        allowed[self.eog] = self.is_complete()
        allowed.flags.writeable = False
        self._masks[sid] = allowed
        if len(self._masks) > self.mask_cache_size:
            self._masks.popitem(last=False)
        return allowed

    def allowed(self) -> np.ndarray:
        """The ids of the tokens allowed next."""
        return np.flatnonzero(self.mask())

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """`logits` with the disallowed tokens set to -inf (in place; also returned)."""
        m = self.mask()
        if not m.any():
            raise GrammarError("the grammar allows no token of this vocabulary here")
        logits[: m.size][~m] = -np.inf
        return logits

    def _walk_trie(self, start: int) -> np.ndarray:
        """Allowed tokens by their bytes: every trie node gets the state its prefix leads to, level by level,
        descending only into live nodes."""
        trie, table = self.trie, self.table
        node_state = np.zeros(trie.n_nodes, dtype=np.int32)
        nodes = np.zeros(1, dtype=np.int64)
        states = np.full(1, start, dtype=np.int32)
        while nodes.size:
            children, owner = trie.children(nodes)
            if not children.size:
                break
            parent_states = states[owner]
            byts = trie.byte[children]
            nxt = table.next[parent_states, byts]
            unknown = nxt < 0
            if unknown.any():
                table.fill(parent_states[unknown], byts[unknown])
                nxt = table.next[parent_states, byts]
            live = nxt != table.DEAD
            nodes, states = children[live], nxt[live]
            node_state[nodes] = states
        allowed = np.zeros(self.n_vocab, dtype=bool)
        has_node = trie.token_node >= 0
        ends = node_state[trie.token_node[has_node]]
        allowed[has_node] = (ends != table.DEAD) & table.end_ok[ends]
        return allowed

    def _token_element_mask(self) -> np.ndarray:
        """Tokens matched whole by token elements (`<[id]>`, `!<[id]>`) on top of a stack."""
        out = np.zeros(self.n_vocab, dtype=bool)
        for stack in self.state.stacks:
            if not stack or stack[-1] not in self.grammar.token_refs:
                continue
            tid = self._token_ids[self.grammar.token_refs[stack[-1]]]
            if self.grammar.elements[stack[-1]][0] == TOKEN:
                out[tid] = True
            else:
                others = np.ones(self.n_vocab, dtype=bool)
                others[tid] = False
                out |= others
        return out & self._whole_characters()

    def _whole_characters(self) -> np.ndarray:
        """Tokens whose piece decodes (as llama.cpp decodes) to whole characters: the only ones a token element
        can match, as in llama.cpp."""
        if self._whole is None:
            self._whole = np.array([_whole_characters(p) for p in self.pieces], dtype=bool)
        return self._whole


def load_grammar(text: str | None = None, path: str | None = None, root: str = "root") -> Grammar:
    """A grammar from its text or a file (`--grammar` / `--grammar-file`)."""
    if path is not None:
        try:
            text = read_text(path, "grammar file")
        except OSError as e:
            raise GrammarError(f"cannot read {path}: {e.strerror}") from None
    if text is None:
        raise GrammarError("no grammar given")
    return Grammar.parse(text, root)
