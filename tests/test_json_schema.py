"""JSON Schema → GBNF (runtime/json_schema.py): our grammars' languages against llama-cpp-python's port of llama.cpp's
converter (run by llama.cpp's grammar engine) and against a JSON Schema validator (jsonschema_rs), and constrained
generation on the Qwen2 vocabulary giving valid JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.grammar import Grammar, GrammarConstraint
from runtime.json_schema import JsonSchemaError, json_object_grammar, schema_to_grammar
from runtime.sampling import Sampler, SamplingParams
from tests.grammar_oracle import byte_tokens, llama_accepts

jsonschema_rs = pytest.importorskip("jsonschema_rs")

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                                    "maxItems": 3}},
          "required": ["name"], "additionalProperties": False}
CORPUS = [  # (schema, candidate instances: valid and invalid ones)
    (PERSON, [{"name": "bob"}, {"name": "bob", "age": 3}, {"age": 3}, {"name": "b", "tags": []},
              {"name": "b", "tags": ["x", "y"]}, {"name": "b", "tags": ["1", "2", "3", "4"]}, {"name": 1}]),
    ({"type": "object", "properties": {"a": {"enum": ["x", 1, None]}, "b": {"const": "fixed"}},
      "required": ["a", "b"], "additionalProperties": False},
     [{"a": "x", "b": "fixed"}, {"a": None, "b": "fixed"}, {"a": 2, "b": "fixed"}, {"a": "x"}, {"a": 1, "b": "f"}]),
    ({"$defs": {"node": {"type": "object", "properties": {"v": {"type": "number"},
                                                          "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                         "required": ["v"], "additionalProperties": False}}, "$ref": "#/$defs/node"},
     [{"v": 1, "kids": [{"v": 2}, {"v": 3.5, "kids": []}]}, {"kids": []}, {"v": "x"}, {"v": 1, "kids": [{}]}]),
    ({"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2},
     [[True, False], [True], [True, False, True], ["x", "y"]]),
    ({"type": "array", "items": {"type": "integer"}}, [[], [1, -2, 30], [1.5], ["a"]]),
    ({"type": ["string", "null"]}, ["x", None, 1, True]),
    ({"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"x": {"type": "null"}}, "required": ["x"],
                                      "additionalProperties": False}]}, [1, {"x": None}, {"x": 1}, "s"]),
    ({"type": "string", "minLength": 2, "maxLength": 4}, ["ab", "abcd", "a", "abcde"]),
    ({"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"}, ["AB-123", "AB-12", "ab-123", "XY-999"]),
    ({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
      "additionalProperties": {"type": "string"}}, [{"id": 1}, {"id": 1, "x": "y"}, {"id": 1, "x": 2}, {"x": "y"}]),
]


@pytest.mark.parametrize("schema,instances", CORPUS, ids=[str(i) for i in range(len(CORPUS))])
def test_language_matches_validator_and_llama_cpp(schema, instances, qwen2, llama_vocab):
    from llama_cpp.llama_grammar import json_schema_to_gbnf
    ours = Grammar.parse(schema_to_grammar(schema))
    try:
        theirs = json_schema_to_gbnf(json.dumps(schema))
    except KeyError:  # the Python port does not resolve "$defs" (llama.cpp's C++ converter does)
        theirs = None
    validator = jsonschema_rs.validator_for(schema)
    tok = qwen2[1]
    byte_ids = byte_tokens([tok.piece_bytes(t) for t in range(tok.n_vocab)])
    probe = llama_vocab.grammar(theirs) if theirs else None  # the Python port's grammar for some schemas does not parse in llama.cpp
    if probe is not None:
        probe.free()
    verdicts = []
    for inst in instances:
        text = json.dumps(inst, separators=(",", ":"))
        accepted = ours.accepts(text)
        assert accepted == validator.is_valid(inst), text
        if probe is not None:
            assert accepted == llama_accepts(llama_vocab, theirs, text, byte_ids, min(tok.eog_ids)), text
        assert ours.accepts(json.dumps(inst)) == accepted  # ", " and ": " spacing too
        verdicts.append(accepted)
    assert True in verdicts and False in verdicts


def test_json_object_grammar_accepts_json_objects():
    ours = Grammar.parse(json_object_grammar())
    samples = ['{}', '{"a": [1, {"b": null}], "c": "d\\n"}', '{"a":-0.5e10}', "[]", '{"a":}', '{"a": 01}', "1"]
    expected = []
    for s in samples:
        try:
            expected.append(isinstance(json.loads(s), dict))
        except json.JSONDecodeError:
            expected.append(False)
    assert [ours.accepts(s) for s in samples] == expected


@pytest.mark.parametrize("keyword", ["minimum", "multipleOf", "uniqueItems", "not"])
def test_unsupported_keywords_are_errors(keyword):
    with pytest.raises(JsonSchemaError, match=keyword):
        schema_to_grammar({"type": "object", "properties": {"x": {"type": "integer", keyword: 1}}})


BOUNDED = [  # random logits never close an unbounded string: these schemas bound every string
    {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string", "maxLength": 5},
                                      "e": {"enum": ["a", "b"]}, "f": {"type": "boolean"}},
     "required": ["n", "s", "e"], "additionalProperties": False},
    {"type": "array", "items": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"}, "minItems": 1, "maxItems": 3},
]


@pytest.mark.parametrize("schema", BOUNDED, ids=["object", "array"])
def test_constrained_generation_validates(schema, qwen2):
    tok = qwen2[1]
    grammar = Grammar.parse(schema_to_grammar(schema))
    validator = jsonschema_rs.validator_for(schema)
    bias = np.zeros(tok.n_vocab)
    bias[list(tok.eog_ids)] = 30.0
    for seed in range(3):
        c = GrammarConstraint(grammar, tok)
        sampler = Sampler(SamplingParams(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed))
        rng = np.random.default_rng(seed)
        out: list[int] = []
        structural = bias.copy()
        for _ in range(300):
            t = sampler.sample(rng.normal(size=tok.n_vocab) * 2 + structural, out, constraint=c)
            if tok.is_eog(t):
                break
            c.accept(t)
            out.append(t)
        assert tok.is_eog(t), tok.decode(out)
        assert validator.is_valid(json.loads(tok.decode(out))), tok.decode(out)
