"""JSON Schema → GBNF, the subset llama.cpp's `json_schema_to_grammar` (b11434) covers, with the same grammar shapes:

types (string, number, integer, boolean, null, object, array, and lists of them), `properties`/`required` (the
properties in their declared order, required ones first; optional ones in any subset, in order),
`additionalProperties` (absent: none when `properties` is given, any object otherwise — as llama.cpp), `enum`,
`const`, `items` (and `prefixItems` or an `items` list as tuples), `minItems`/`maxItems`, `minLength`/`maxLength`,
`pattern` (a regular expression: literals, `.`, classes, `\\d \\w \\s`, groups, `|`, `* + ? {m,n}`), `format`
date, time, date-time and uuid (other formats are annotations and ignored, as validators do by default), `$ref` to
`#/$defs/...` or `#/definitions/...` (recursive ones too), `anyOf`/`oneOf`, `allOf` of objects, and the generic
`{"type": "json_object"}` grammar (llama.cpp's grammars/json.gbnf).

A keyword that constrains values in a way the grammar cannot express (numeric bounds, `multipleOf`, `uniqueItems`,
`not`, `if`, ...) is a `JsonSchemaError` naming it and where it is, never silently dropped.
"""
from __future__ import annotations

import json
import re

from common.errors import UserError

SPACE = '| " " | "\\n"{1,2} [ \\t]{0,20}'

PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {  # name → (body, rules it uses)
    "boolean": ('("true" | "false") space', ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "number": ('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space',
               ("integral-part", "decimal-part")),
    "integer": ('("-"? integral-part) space', ("integral-part",)),
    "value": ("object | array | string | number | boolean | null",
              ("object", "array", "string", "number", "boolean", "null")),
    "object": ('"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
               ("string", "value")),
    "array": ('"[" space ( value ("," space value)* )? "]" space', ("value",)),
    "uuid": ('"\\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} '
             '"\\"" space', ()),
    "char": ('[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": ('"\\"" char* "\\"" space', ("char",)),
    "null": ('"null" space', ()),
    "date": ('[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )', ()),
    "time": ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
             '( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )', ()),
    "date-time": ('date "T" time', ("date", "time")),
    "date-string": ('"\\"" date "\\"" space', ("date",)),
    "time-string": ('"\\"" time "\\"" space', ("time",)),
    "date-time-string": ('"\\"" date-time "\\"" space', ("date-time",)),
}
FORMATS = {"date": "date-string", "time": "time-string", "date-time": "date-time-string", "uuid": "uuid"}

# keywords that only describe (or that the converter reads where they matter)
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "readOnly", "writeOnly",
                "deprecated", "$defs", "definitions", "format", "contentMediaType", "contentEncoding"}
_UNSUPPORTED = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems", "not",
                "if", "then", "else", "patternProperties", "propertyNames", "minProperties", "maxProperties",
                "dependentRequired", "dependentSchemas", "dependencies", "contains", "minContains", "maxContains",
                "unevaluatedProperties", "unevaluatedItems"}
_TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")


class JsonSchemaError(UserError):
    """A schema the converter cannot turn into a grammar (unsupported keyword, bad `$ref`, malformed schema)."""


def literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _rule_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9-]+", "-", text).strip("-") or "r"


def repetition(item: str, low: int, high: int | None, separator: str | None = None) -> str:
    """GBNF for `item` repeated low..high times (high None: unbounded), with `separator` between items."""
    if high == 0:
        return ""
    bound = lambda lo, hi: "" if (lo, hi) == (1, 1) else f"{{{lo},{'' if hi is None else hi}}}"  # noqa: E731
    if separator is None:
        return f"{item}{bound(low, high)}" if (low, high) != (1, 1) else item
    rest_high = None if high is None else high - 1
    rest = f"({separator} {item}){bound(max(low - 1, 0), rest_high)}" if rest_high != 0 else ""
    body = f"{item} {rest}".strip()
    return body if low > 0 else f"({body})?"


class SchemaConverter:
    """Builds the grammar's rules while visiting a schema; `grammar()` gives the GBNF text."""

    def __init__(self, root_schema: dict):
        self.root_schema = root_schema
        self.rules: dict[str, str] = {"space": SPACE}
        self.refs: dict[str, str] = {}

    # -- rules ----------------------------------------------------------------------------------------------------
    def add_rule(self, name: str, body: str) -> str:
        name = _rule_name(name)
        key, i = name, 0
        while key in self.rules and self.rules[key] != body:
            i += 1
            key = f"{name}{i}"
        self.rules[key] = body
        return key

    def primitive(self, name: str) -> str:
        body, deps = PRIMITIVES[name]
        self.rules[name] = body
        for dep in deps:
            if dep not in self.rules:
                self.primitive(dep)
        return name

    def grammar(self) -> str:
        return "".join(f"{name} ::= {body}\n" for name, body in self.rules.items())

    # -- schemas --------------------------------------------------------------------------------------------------
    def visit(self, schema, name: str, path: str = "#") -> str:
        """The name of a rule matching the JSON values `schema` describes (followed by optional whitespace)."""
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise JsonSchemaError(f"{path}: the schema `false` matches nothing")
        if not isinstance(schema, dict):
            raise JsonSchemaError(f"{path}: a schema must be an object or a boolean, got {type(schema).__name__}")
        self._check_keywords(schema, path)
        if "$ref" in schema:
            return self.add_rule(name, self.ref(schema["$ref"], path))
        if "const" in schema:
            return self.add_rule(name, self.constant(schema["const"]))
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise JsonSchemaError(f"{path}/enum: expecting a non-empty list")
            return self.add_rule(name, "(" + " | ".join(self.constant(v) for v in schema["enum"]) + ")")
        for key in ("anyOf", "oneOf"):
            if key in schema:
                rest = {k: v for k, v in schema.items() if k != key}
                alts = [self.visit({**rest, **alt} if isinstance(alt, dict) else alt, f"{name}-{i}",
                                   f"{path}/{key}/{i}") for i, alt in enumerate(schema[key])]
                return self.add_rule(name, " | ".join(alts))
        if "allOf" in schema:
            return self.add_rule(name, self.all_of(schema, name, path))
        kind = schema.get("type")
        if isinstance(kind, list):
            alts = [self.visit({**schema, "type": k}, f"{name}-{k}", path) for k in kind]
            return self.add_rule(name, " | ".join(alts))
        if kind is None:
            kind = self._implied_type(schema)
            if kind is None:
                return self.add_rule(name, self.primitive("value"))
        if kind not in _TYPES:
            raise JsonSchemaError(f"{path}/type: unknown type {kind!r}")
        return self.add_rule(name, getattr(self, f"body_{kind}")(schema, name, path))

    def _check_keywords(self, schema: dict, path: str) -> None:
        bad = sorted(set(schema) & _UNSUPPORTED)
        if bad:
            raise JsonSchemaError(f"{path}: {', '.join(bad)} cannot be expressed as a grammar (not supported)")

    @staticmethod
    def _implied_type(schema: dict) -> str | None:
        if "properties" in schema or "additionalProperties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema or "minItems" in schema or "maxItems" in schema:
            return "array"
        if {"pattern", "minLength", "maxLength", "format"} & set(schema):
            return "string"
        return None

    def constant(self, value) -> str:
        return literal(json.dumps(value, ensure_ascii=False, separators=(",", ":"))) + " space"

    def ref(self, ref: str, path: str) -> str:
        if ref in self.refs:
            return self.refs[ref]
        if not ref.startswith("#/"):
            raise JsonSchemaError(f"{path}/$ref: only references inside the schema (#/...) are supported, got {ref!r}")
        target = self.root_schema
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise JsonSchemaError(f"{path}/$ref: {ref!r} points to nothing")
            target = target[part]
        rule, base, i = _rule_name("ref-" + ref[2:].split("/")[-1]), _rule_name("ref-" + ref[2:].split("/")[-1]), 0
        while rule in self.rules:
            i += 1
            rule = f"{base}{i}"
        self.refs[ref] = rule
        self.rules.setdefault(rule, "")  # reserve the name while visiting (recursive references)
        body_rule = self.visit(target, rule + "-body", ref)
        self.rules[rule] = body_rule
        return rule

    def all_of(self, schema: dict, name: str, path: str) -> str:
        merged: dict = {"type": "object", "properties": {}, "required": []}
        for i, part in enumerate(schema["allOf"]):
            while isinstance(part, dict) and "$ref" in part:
                part = self._resolve(part["$ref"], f"{path}/allOf/{i}")
            if not isinstance(part, dict) or part.get("type", "object") != "object":
                raise JsonSchemaError(f"{path}/allOf/{i}: only objects can be combined with allOf")
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return self.body_object(merged, name, path)

    def _resolve(self, ref: str, path: str):
        target = self.root_schema
        for part in ref[2:].split("/") if ref.startswith("#/") else [None]:
            if part is None or not isinstance(target, dict) or part not in target:
                raise JsonSchemaError(f"{path}/$ref: {ref!r} points to nothing")
            target = target[part]
        return target

    # -- one body per type --------------------------------------------------------------------------------------
    def body_null(self, schema, name, path) -> str:
        return self.primitive("null")

    def body_boolean(self, schema, name, path) -> str:
        return self.primitive("boolean")

    def body_number(self, schema, name, path) -> str:
        return self.primitive("number")

    def body_integer(self, schema, name, path) -> str:
        return self.primitive("integer")

    def body_string(self, schema, name, path) -> str:
        if "pattern" in schema:
            return pattern_body(schema["pattern"], self, f"{path}/pattern")
        fmt = schema.get("format")
        if fmt in FORMATS:
            return self.primitive(FORMATS[fmt])
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if low or high is not None:
            return f'"\\"" {repetition(self.primitive("char"), low, high)} "\\"" space'
        return self.primitive("string")

    def body_array(self, schema, name, path) -> str:
        items = schema.get("prefixItems", schema.get("items"))
        if isinstance(items, list):
            parts = [self.visit(item, f"{name}-tuple-{i}", f"{path}/items/{i}") for i, item in enumerate(items)]
            return '"[" space ' + ' "," space '.join(parts) + ' "]" space'
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if items in (None, True, {}) and not low and high is None:
            return self.primitive("array")
        item = self.visit(items if items is not None else True, f"{name}-item", f"{path}/items")
        return f'"[" space {repetition(item, low, high, chr(34) + "," + chr(34) + " space")} "]" space'

    def body_object(self, schema, name, path) -> str:
        props = schema.get("properties", {})
        additional = schema.get("additionalProperties", None if props else True)
        if not props and additional in (True, {}):
            return self.primitive("object")
        required = set(schema.get("required", []))
        kv = {}
        for prop, sub in props.items():
            value = self.visit(sub, f"{name}-{prop}", f"{path}/properties/{prop}")
            kv[prop] = self.add_rule(f"{name}-{prop}-kv", f'{literal(json.dumps(prop, ensure_ascii=False))} space '
                                                          f'":" space {value}')
        required_kv = [kv[p] for p in props if p in required]
        optional_kv = [kv[p] for p in props if p not in required]
        if additional not in (None, False):
            value = self.visit(additional, f"{name}-additional-value", f"{path}/additionalProperties")
            self.primitive("char")
            key = self.add_rule(f"{name}-additional-k", not_strings(list(props)) if props else
                                self.primitive("string"))
            optional_kv.append("*" + self.add_rule(f"{name}-additional-kv", f'{key} ":" space {value}'))
        return self._object_rule(required_kv, optional_kv, name)

    def _object_rule(self, required_kv: list[str], optional_kv: list[str], name: str) -> str:
        """`{` required (in order) then any subset of the optional ones (in order) `}`; an entry starting with `*`
        (additional properties) may repeat."""
        body = '"{" space ' + ' "," space '.join(required_kv)
        if optional_kv:
            chains = " | ".join(self._optional_chain(optional_kv[i:], name) for i in range(len(optional_kv)))
            body += f' ( "," space ( {chains} ) )?' if required_kv else f" ( {chains} )?"
        return body + ' "}" space'

    def _optional_chain(self, kvs: list[str], name: str) -> str:
        """The first of `kvs`, then optionally any later ones in order."""
        first, repeat = kvs[0].lstrip("*"), kvs[0].startswith("*")
        out = f'{first} ( "," space {first} )*' if repeat else first
        if len(kvs) > 1:
            rest = " ".join(f'( "," space {k.lstrip("*")} ){"*" if k.startswith("*") else "?"}' for k in kvs[1:])
            out += " " + self.add_rule(f"{name}-{first}-rest", rest)
        return out


def not_strings(names: list[str]) -> str:
    """GBNF for a JSON string key that is none of `names` (a trie of the names, leaving it at any point)."""
    trie: dict = {}
    for n in names:
        node = trie
        for c in n:
            node = node.setdefault(c, {})
        node[None] = True

    def visit(node: dict) -> str:
        chars = [c for c in node if c is not None]
        alts = [f"{literal(c)} {visit(node[c])}" for c in sorted(chars)]
        excluded = "".join(_class_char(c) for c in sorted(chars))
        alts.append(f"[^\"\\\\\\x7F\\x00-\\x1F{excluded}] char*")
        alts.append('[\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4}) char*')
        if None not in node:
            alts.append('""')
        return "(" + " | ".join(alts) + ")"

    return f'"\\"" {visit(trie)} "\\"" space'


def _class_char(c: str) -> str:
    return "\\" + c if c in "]\\-^[\"" else c


# ---------------------------------------------------------------------------------------------------------------
# regular expressions (`pattern`)
# ---------------------------------------------------------------------------------------------------------------
_JSON_CHAR = '[^"\\\\\\x7F\\x00-\\x1F]'
_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " \\t\\n\\r"}


class _Regex:
    """A regular expression (the subset llama.cpp translates) as a GBNF sequence over a JSON string's characters."""

    def __init__(self, pattern: str, path: str):
        self.src, self.pos, self.path = pattern, 0, path

    def error(self, message: str) -> JsonSchemaError:
        return JsonSchemaError(f"{self.path}: {message} at offset {self.pos} of {self.src!r}")

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def alternation(self) -> str:
        alts = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            alts.append(self.sequence())
        return alts[0] if len(alts) == 1 else "(" + " | ".join(a or '""' for a in alts) + ")"

    def sequence(self) -> str:
        parts: list[str] = []
        while self.peek() and self.peek() not in "|)":
            atom = self.atom()
            parts.append(self.quantified(atom))
        return " ".join(p for p in parts if p)

    def atom(self) -> str:
        c = self.peek()
        self.pos += 1
        if c == "(":
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.peek() == "?":
                raise self.error("lookarounds and named groups are not supported")
            inner = self.alternation()
            if self.peek() != ")":
                raise self.error("unclosed group")
            self.pos += 1
            return f"({inner})" if inner else '""'
        if c == "[":
            return self.char_class()
        if c == ".":
            return _JSON_CHAR
        if c == "\\":
            return self.escape()
        if c in "*+?{":
            raise self.error(f"nothing to repeat before {c!r}")
        if c in "^$":
            raise self.error("anchors are only supported at the start and end")
        return self.char_literal(c)

    def char_literal(self, c: str) -> str:
        if c in '"\\' or ord(c) < 0x20:
            raise self.error(f"the character {c!r} needs JSON escaping, not supported in patterns")
        return literal(c)

    def escape(self) -> str:
        c = self.peek()
        self.pos += 1
        if c in _CLASS_ESCAPES:
            return f"[{_CLASS_ESCAPES[c]}]"
        if c in "DWS":
            return f"[^\"\\\\\\x7F\\x00-\\x1F{_CLASS_ESCAPES[c.lower()]}]"
        if c and not c.isalnum():
            return self.char_literal(c)
        raise self.error(f"unsupported escape \\{c}")

    def char_class(self) -> str:
        negated = self.peek() == "^"
        self.pos += negated
        items = []
        first = True
        while first or self.peek() != "]":
            first = False
            c = self.peek()
            if not c:
                raise self.error("unclosed character class")
            self.pos += 1
            if c == "\\":
                e = self.peek()
                self.pos += 1
                if e in _CLASS_ESCAPES:
                    items.append(_CLASS_ESCAPES[e])
                    continue
                if not e or e.isalnum():
                    raise self.error(f"unsupported escape \\{e} in a class")
                c = e
            if c in '"\\' or ord(c) < 0x20:
                raise self.error(f"the character {c!r} needs JSON escaping, not supported in patterns")
            items.append(_class_char(c))
            if self.peek() == "-" and self.pos + 1 < len(self.src) and self.src[self.pos + 1] != "]":
                self.pos += 1
                hi = self.peek()
                self.pos += 1
                items.append("-" + _class_char(hi))
        self.pos += 1
        body = "".join(items)
        return f"[^\"\\\\\\x7F\\x00-\\x1F{body}]" if negated else f"[{body}]"

    def quantified(self, atom: str) -> str:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.pos += 1
            out = f"{atom}{c}"
        elif c == "{" and re.match(r"\{\d+(,\d*)?\}", self.src[self.pos:]):
            m = re.match(r"\{(\d+)(,(\d*))?\}", self.src[self.pos:])
            self.pos += m.end()
            low = int(m.group(1))
            high = low if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
            out = f"({atom}){{{low},{'' if high is None else high}}}"
        else:
            return atom
        if self.peek() in "+?" and self.peek():  # lazy or possessive markers change nothing in a grammar
            self.pos += 1
        return out


def pattern_body(pattern: str, conv: SchemaConverter, path: str) -> str:
    """A JSON string whose content matches `pattern` (searched, as JSON Schema does: `^`/`$` anchor it)."""
    src = pattern
    start = src.startswith("^")
    end = src.endswith("$") and not src.endswith("\\$")
    src = src[1 if start else 0:len(src) - 1 if end else len(src)]
    rx = _Regex(src, path)
    rx.pos = 0
    inner = rx.alternation()
    if rx.pos != len(src):
        raise rx.error("unbalanced ')'")
    char = conv.primitive("char")
    parts = ([] if start else [f"{char}*"]) + [f"({inner})" if inner else ""] + ([] if end else [f"{char}*"])
    return '"\\"" ' + " ".join(p for p in parts if p) + ' "\\"" space'


# ---------------------------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------------------------
def schema_to_grammar(schema: dict | bool | str) -> str:
    """GBNF text (start rule `root`) for the JSON values a JSON Schema describes."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise JsonSchemaError(f"the schema is not JSON: {e}") from None
    conv = SchemaConverter(schema if isinstance(schema, dict) else {})
    top = conv.visit(schema, "root")
    if top != "root":
        conv.rules["root"] = top
    return conv.grammar()


def json_object_grammar() -> str:
    """`response_format: {"type": "json_object"}`: any JSON object (llama.cpp's grammars/json.gbnf language)."""
    conv = SchemaConverter({})
    conv.rules["root"] = conv.primitive("object")
    return conv.grammar()
