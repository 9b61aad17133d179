"""Structured output: what the command line, the Python API and the server accept to constrain a generation,
turned into one `runtime.grammar.Grammar` (or None for free text).

- `grammar`: GBNF text (llama.cpp's format) or an already parsed Grammar;
- `json_schema`: a JSON Schema (a dict or its JSON text), through runtime.json_schema (llama.cpp's converter);
- `response_format`: OpenAI's / llama-cpp-python's `{"type": "text"}`, `{"type": "json_object"}` (optionally with a
  `schema`, as llama-cpp-python and llama-server take it) and `{"type": "json_schema", "json_schema": {"schema":
  ...}}`.
Every fault is a UserError (GrammarError / JsonSchemaError) with a one-line message."""
from __future__ import annotations

from runtime.grammar import Grammar, GrammarError
from runtime.json_schema import JsonSchemaError, json_object_grammar, schema_to_grammar


def parse_grammar(grammar: str | Grammar | None) -> Grammar | None:
    """GBNF text or a Grammar, as a Grammar (None: no constraint)."""
    if grammar is None or isinstance(grammar, Grammar):
        return grammar
    if not isinstance(grammar, str):
        raise GrammarError(f"a grammar must be GBNF text or a Grammar, got {type(grammar).__name__}")
    return Grammar.parse(grammar)


def schema_grammar(schema) -> Grammar:
    """The grammar of the JSON values a JSON Schema (a dict, a boolean or JSON text) describes."""
    return Grammar.parse(schema_to_grammar(schema))


def response_format_grammar(response_format: dict | None) -> Grammar | None:
    """OpenAI's response_format as a grammar (None for text)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise JsonSchemaError("response_format must be an object with a `type`")
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return schema_grammar(schema) if schema is not None else Grammar.parse(json_object_grammar())
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise JsonSchemaError('response_format json_schema needs {"json_schema": {"schema": {...}}}')
        return schema_grammar(spec["schema"])
    raise JsonSchemaError(f"response_format type must be text, json_object or json_schema, got {kind!r}")


def one_constraint(**given) -> Grammar | None:
    """The one grammar among the named sources (`grammar=`, `json_schema=`, `response_format=`); giving more than
    one is a mistake, not a silent choice."""
    present = [name for name, value in given.items() if value is not None
               and not (name == "response_format" and isinstance(value, dict) and value.get("type", "text") == "text")]
    if len(present) > 1:
        raise GrammarError(f"give one of {', '.join(present)}, not several")
    if not present:
        return None
    name, value = present[0], given[present[0]]
    if name == "json_schema":
        return schema_grammar(value)
    if name == "response_format":
        return response_format_grammar(value)
    return parse_grammar(value)
