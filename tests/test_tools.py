"""Issue 14, tool calls: `tools`, `tool_choice`, `parallel_tool_calls`, assistant `tool_calls` and `role: "tool"`
messages, on `toolkit serve` through the official `openai` client, and in the Python API.

Oracles:
- prompts: transformers' `apply_chat_template(..., tools=...)` on every template of ../shared/fixtures/chat-templates
  that shows tools, character for character (the conversation given to transformers in its documented shape: each
  call's arguments an object), directly and through the server's /apply-template and the prompt size it reports;
- parsing: each supported format's text, written out here by hand, is the model's output. FORCED-TOKEN PATH: the text
  is forced through the real model and sampler by llama-server's `grammar` field (a GBNF grammar that is the one
  literal), so nothing in the runtime is faked; the `openai` client then reads `tool_calls` from the answer, streamed
  and not, and they must be the calls written in the text;
- `tool_choice` required / a named function with stories260K (a tiny model that knows nothing of tools): each call
  names a declared function and its arguments validate against its parameters schema (jsonschema_rs)."""
from __future__ import annotations

import concurrent.futures
import json
import re

import jsonschema_rs
import openai
import pytest

from common.ggufio import GGUFFile
from runtime.api import Llama
from runtime.chat import JinjaFormat
from runtime.json_schema import literal
from runtime.tokenizer import Tokenizer
from runtime.tools import tool_format
from tests.test_server import KEY, _serve, _stop

NAME = "stories"
N_CTX = 4096
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["c", "f"]}}, "required": ["city"]}
TIME = {"type": "object", "properties": {"zone": {"enum": ["CET", "UTC", "PST"]}, "hours": {"type": "integer"}},
        "required": ["zone", "hours"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time in a zone",
                                           "parameters": TIME}},
         {"type": "function", "function": {"name": "brave_search", "description": "Search the web",
                                           "parameters": {"type": "object", "properties": {"query": {
                                               "type": "string", "maxLength": 20}}, "required": ["query"]}}}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

# the templates of each format the servers below use (one server per format), and the model's own templates that
# must show the tools and a tool result (not refuse the conversation)
SERVED = {"hermes": "Qwen-Qwen2.5-7B-Instruct.jinja", "llama3": "meta-llama-Llama-3.3-70B-Instruct.jinja",
          "mistral": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
          "mistral-args": "Mistral-Small-3.2-24B-Instruct-2506.jinja",
          "functionary-v3.1": "meetkai-functionary-medium-v3.1.jinja",
          "functionary-v3.2": "meetkai-functionary-medium-v3.2.jinja", "generic": None}
MAIN_TEMPLATES = {"Qwen-Qwen2.5-7B-Instruct.jinja": "hermes", "Qwen-Qwen3-0.6B.jinja": "hermes",
                  "Qwen-QwQ-32B.jinja": "hermes", "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": "hermes",
                  "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": "hermes",
                  "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3",
                  "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3",
                  "meta-llama-Llama-3.3-70B-Instruct.jinja": "llama3",
                  "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral",
                  "Mistral-Small-3.2-24B-Instruct-2506.jinja": "mistral-args",
                  "mistralai-Ministral-3-14B-Reasoning-2512.jinja": "mistral-args",
                  "meetkai-functionary-medium-v3.1.jinja": "functionary-v3.1",
                  "meetkai-functionary-medium-v3.2.jinja": "functionary-v3.2"}
# templates that take a call's arguments as JSON text (as OpenAI sends them), not as an object
TEXT_ARGUMENTS = {"meetkai-functionary-medium-v3.2.jinja"}


def openai_call(id_: str, name: str, args: dict) -> dict:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


# conversations as an `openai` program sends them (arguments as JSON text, null content for a message of calls)
CONVERSATIONS = {
    "one-call": [
        {"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [openai_call("call12345", "get_weather",
                                                                          {"city": "Paris", "unit": "c"})]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temp": 21}'}],
    "two-calls": [
        {"role": "user", "content": "Weather and time in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            openai_call("call00001", "get_weather", {"city": "Oslo"}),
            openai_call("call00002", "get_time", {"zone": "CET", "hours": 1})]},
        {"role": "tool", "tool_call_id": "call00001", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call00002", "content": "12:00"},
        {"role": "assistant", "content": "Sunny, and noon."}, {"role": "user", "content": "Thanks! And in Rome?"}],
}


def transformers_shape(messages: list[dict], text_arguments: bool = False) -> list[dict]:
    """The same conversation as transformers documents it: a call's arguments an object (JSON text for a template
    that concatenates them), content text."""
    out = []
    for m in messages:
        m = {**m, "content": m["content"] or ""}
        if "tool_calls" in m and not text_arguments:
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
        out.append(m)
    return out


@pytest.fixture(scope="module")
def templates(shared_fixtures):
    return shared_fixtures / "chat-templates"


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A transformers tokenizer whose only role is apply_chat_template (BOS/EOS texts as stories260K's)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=HFTokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                   bos_token="<s>", eos_token="</s>")


def transformers_render(hf_tokenizer, file, messages: list[dict], tools=TOOLS) -> str:
    return hf_tokenizer.apply_chat_template(transformers_shape(messages, file.name in TEXT_ARGUMENTS), tools=tools,
                                            chat_template=file.read_text(), tokenize=False, add_generation_prompt=True)


def tool_templates() -> list[str]:
    from tests.conftest import SHARED
    folder = SHARED / "chat-templates"
    if not folder.is_dir():
        return sorted(MAIN_TEMPLATES)  # the fixture then skips (or fails in CI)
    return sorted(f.name for f in folder.glob("*.jinja") if JinjaFormat(f.read_text(), ()).supports_tools)


# -- prompts: transformers' rendering ---------------------------------------------------------------------------------
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("file", tool_templates())
def test_template_renders_tools_as_transformers(templates, hf_tokenizer, file, conversation):
    """Every template that shows tools: our prompt (the openai-shaped conversation, through runtime.tools) equals
    transformers' character for character, or both refuse the conversation (the template raises)."""
    from runtime.tools import ToolPlan
    from common.errors import UserError
    text = (templates / file).read_text()
    messages = CONVERSATIONS[conversation]
    try:
        expected = transformers_render(hf_tokenizer, templates / file, messages)
    except Exception as e:  # noqa: BLE001 — the template's own refusal
        # (Llama 3.x templates take one call per message)
        assert file not in MAIN_TEMPLATES or conversation != "one-call", f"transformers refuses {file}: {e}"
        with pytest.raises(UserError, match="chat template failed"):
            ToolPlan(JinjaFormat(text, ()), TOOLS, "auto").prompt_text(STORIES_TOK, messages)
        return
    assert ToolPlan(JinjaFormat(text, ()), TOOLS, "auto").prompt_text(STORIES_TOK, messages) == expected


class _Texts:  # BOS/EOS texts as stories260K's tokenizer gives them, for the rendering-only test above
    bos_id, eos_id = 1, 2

    @staticmethod
    def token_text(t):
        return {1: "<s>", 2: "</s>"}[t]


STORIES_TOK = _Texts()


def test_main_templates_show_tools_and_results(templates):
    """The formats this module parses are read from the templates, and those templates show the tools and the
    tool results (so the comparison above is not between two empty renderings)."""
    from runtime.tools import ToolPlan
    for file, fmt in MAIN_TEMPLATES.items():
        chat = JinjaFormat((templates / file).read_text(), ())
        assert tool_format(chat).name == fmt, file
        text = ToolPlan(chat, TOOLS, "auto").prompt_text(STORIES_TOK, CONVERSATIONS["one-call"])
        assert "brave_search" in text and "temp" in text and "21" in text and "Paris" in text, file


# -- servers: one per format ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(stories260k_f32):
    return stories260k_f32


@pytest.fixture(scope="module")
def servers(model, templates, tmp_path_factory):
    """`toolkit serve` with each format's template (--chat-template FILE), started together."""
    def start(fmt):
        args = ["-c", N_CTX, "--api-key", KEY, "--alias", NAME]
        if SERVED[fmt]:
            args += ["--chat-template", templates / SERVED[fmt]]
        return _serve(model, tmp_path_factory.mktemp(f"tools-{fmt}") / "stderr.txt", *args)
    with concurrent.futures.ThreadPoolExecutor(len(SERVED)) as pool:
        started = dict(zip(SERVED, pool.map(start, SERVED)))
    yield started
    for srv in started.values():
        _stop(srv)


def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def forced(text: str) -> str:
    """FORCED-TOKEN PATH: the GBNF grammar of exactly `text` (the scripted model output)."""
    return f"root ::= {literal(text)}"


def answer(srv, text: str, stream: bool, **kw):
    """The answer to a request whose model output is forced to `text`: (content, calls as (name, arguments
    object, id), finish_reason), from the openai client, streamed (deltas accumulated) or not."""
    kw = dict(model=NAME, messages=[{"role": "user", "content": "Weather in Paris, time in Oslo?"}], tools=TOOLS,
              max_tokens=400, extra_body={"grammar": forced(text)}, **kw)
    oai = client(srv)
    if not stream:
        choice = oai.chat.completions.create(**kw).choices[0]
        calls = [(c.function.name, json.loads(c.function.arguments), c.id, c.type)
                 for c in choice.message.tool_calls or []]
        return choice.message.content, calls, choice.finish_reason
    content, parts, reason = "", {}, None
    for chunk in oai.chat.completions.create(stream=True, **kw):
        delta, reason = chunk.choices[0].delta, chunk.choices[0].finish_reason or reason
        content += delta.content or ""
        for c in delta.tool_calls or []:
            part = parts.setdefault(c.index, {"id": None, "name": "", "arguments": "", "type": None})
            part["id"] = c.id or part["id"]
            part["type"] = c.type or part["type"]
            part["name"] += c.function.name or "" if c.function else ""
            part["arguments"] += c.function.arguments or "" if c.function else ""
    calls = [(p["name"], json.loads(p["arguments"]), p["id"], p["type"]) for _, p in sorted(parts.items())]
    return content or None, calls, reason


# scripted outputs: format, text, the content and calls they hold
SCRIPTS = {
    "hermes-two": ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
                   '"unit": "c"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET", '
                   '"hours": 1}}\n</tool_call>',
                   "Let me check.", [("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {"zone": "CET",
                                                                                             "hours": 1})]),
    "hermes-one": ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>',
                   None, [("get_weather", {"city": "Zürich"})]),
    "llama3-json": ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}', None,
                    [("get_weather", {"city": "Paris"})]),
    "llama3-python-tag": ("llama3", '<|python_tag|>{"name": "get_time", "parameters": {"zone": "UTC", "hours": 0}}',
                          None, [("get_time", {"zone": "UTC", "hours": 0})]),
    "llama3-builtin": ("llama3", '<|python_tag|>brave_search.call(query="weather paris")', None,
                       [("brave_search", {"query": "weather paris"})]),
    "mistral": ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}, '
                '{"name": "get_time", "arguments": {"zone": "PST", "hours": -8}, "id": "f5g6h7i8j"}]',
                None, [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "PST", "hours": -8})]),
    "mistral-args": ("mistral-args", '[TOOL_CALLS]get_weather[CALL_ID]x1y2z3w4v[ARGS]{"city": "Paris"}[TOOL_CALLS]'
                     'get_time[CALL_ID]Q9R8S7T6U[ARGS]{"zone": "CET", "hours": 2}', None,
                     [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET", "hours": 2})]),
    "functionary-v3.1": ("functionary-v3.1", 'Sure.<function=get_weather>{"city": "Paris"}</function>', "Sure.",
                         [("get_weather", {"city": "Paris"})]),
    "functionary-v3.2": ("functionary-v3.2", 'all\nChecking.>>>get_weather\n{"city": "Paris"}>>>get_time\n'
                         '{"zone": "UTC", "hours": 3}', "Checking.",
                         [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "UTC", "hours": 3})]),
    "generic": ("generic", '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "f"}}]}',
                None, [("get_weather", {"city": "Paris", "unit": "f"})]),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripted_output_parses_into_tool_calls(servers, script, stream):
    fmt, text, content, calls = SCRIPTS[script]
    got_content, got_calls, reason = answer(servers[fmt], text, stream)
    assert reason == "tool_calls"
    assert got_content == content
    assert [(name, args) for name, args, _, _ in got_calls] == calls
    ids = [i for _, _, i, _ in got_calls]
    assert len(set(ids)) == len(ids)
    if fmt.startswith("mistral"):  # the model's own ids, which Mistral's templates want back
        assert ids == [a or b for a, b in re.findall(r'"id": "(\w{9})"|\[CALL_ID\](\w{9})', text)]
    else:
        assert all(i.startswith("call_") for i in ids)
    assert {t for _, _, _, t in got_calls} == {"function"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_text_that_is_no_call_stays_content(servers, stream):
    """Plain text, a call of an undeclared function and a half-written call are content, finish_reason stop;
    streamed, the content is the same text."""
    for fmt, text in [("hermes", "It is sunny <tool in Paris."),
                      ("hermes", '<tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>'),
                      ("llama3", '{"name": "get_weather", "parameters": {"city": "Par'),
                      ("mistral-args", "[TOOL_CALLS]get_weather[ARGS]{oops}"), ("generic", '{"answer": 42}')]:
        assert answer(servers[fmt], text, stream) == (text, [], "stop"), (fmt, text)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_functionary_answer_to_all_is_content(servers, stream):
    """Functionary v3.2 addresses its text to `all`: that is the content, without the recipient."""
    assert answer(servers["functionary-v3.2"], "all\nIt is sunny.", stream) == ("It is sunny.", [], "stop")


def test_parallel_tool_calls_false_keeps_one_call(servers):
    fmt, text, _, calls = SCRIPTS["hermes-two"]
    _, got, reason = answer(servers[fmt], text, False, parallel_tool_calls=False)
    assert [(n, a) for n, a, _, _ in got] == calls[:1] and reason == "tool_calls"


def test_tool_choice_none_parses_nothing(servers):
    fmt, text, _, _ = SCRIPTS["hermes-one"]
    assert answer(servers[fmt], text, False, tool_choice="none") == (text, [], "stop")


# -- tool_choice required / a named function: grammar-constrained calls ---------------------------------------------
def check_calls(calls, names) -> None:
    assert calls, "no call"
    for name, args, _, _ in calls:
        assert name in names
        jsonschema_rs.validate(SCHEMAS[name], args)


@pytest.mark.parametrize("fmt", sorted(SERVED))
def test_required_gives_valid_calls(servers, fmt):
    """stories260K knows nothing of tools: the grammar alone makes its answer a call of a declared function whose
    arguments validate, in each format, streamed and not."""
    oai = client(servers[fmt])
    for seed in range(3):
        for stream in (False, True):
            kw = dict(model=NAME, messages=[{"role": "user", "content": "Once upon a time"}], tools=TOOLS,
                      tool_choice="required", seed=seed, max_tokens=300, temperature=1.0, parallel_tool_calls=False)
            content, calls, reason = answer_of(oai, kw, stream)
            assert reason == "tool_calls" and content is None, (seed, stream, content)
            assert len(calls) == 1
            check_calls(calls, set(SCHEMAS))


@pytest.mark.parametrize("script", ["hermes-two", "mistral", "mistral-args", "functionary-v3.2"])
def test_call_grammar_takes_the_declared_calls(templates, script):
    """The grammar of required calls: the scripted answers with several calls only when parallel calls are allowed;
    a call of an undeclared function, or arguments that break the declared schema, never."""
    from runtime.tools import call_grammar
    fmt, text, content, _ = SCRIPTS[script]
    text = text.removeprefix("Let me check.\n").removeprefix("all\nChecking.>>>")
    fmt = tool_format(JinjaFormat((templates / SERVED[fmt]).read_text(), ()))
    parallel, single = (call_grammar(fmt, TOOLS, None, p) for p in (True, False))
    assert parallel.accepts(text) and not single.accepts(text)
    for good, bad in [('"get_weather"', '"get_wetter"'), ('"city": "Paris"', '"town": "Paris"'),
                      ("get_weather[", "get_wetter["), ('"hours": 1', '"hours": "1"'),
                      ("x1y2z3w4v", "x1y2z3w4"), ('"a1b2c3d4e"', '"a1b2c3d4"')]:
        if good in text:
            assert not parallel.accepts(text.replace(good, bad)), bad


def test_required_with_n_choices(servers):
    """n = 2: each choice is read back on its own (its index), streamed as whole."""
    oai = client(servers["hermes"])
    kw = dict(model=NAME, messages=[{"role": "user", "content": "Hi"}], tools=TOOLS, tool_choice="required", seed=4,
              n=2, max_tokens=300, parallel_tool_calls=False)
    whole = oai.chat.completions.create(**kw).choices
    assert [c.index for c in whole] == [0, 1] and {c.finish_reason for c in whole} == {"tool_calls"}
    streamed = {0: "", 1: ""}
    for chunk in oai.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            streamed[c.index] += "".join(t.function.arguments or "" for t in c.delta.tool_calls or [])
    for c in whole:
        check_calls([(t.function.name, json.loads(t.function.arguments), t.id, t.type) for t in c.message.tool_calls],
                    set(SCHEMAS))
        assert streamed[c.index] == c.message.tool_calls[0].function.arguments


def answer_of(oai, kw, stream):
    """(content, calls, finish_reason) of a request without a forced output."""
    if not stream:
        c = oai.chat.completions.create(**kw).choices[0]
        return c.message.content, [(t.function.name, json.loads(t.function.arguments), t.id, t.type)
                                   for t in c.message.tool_calls or []], c.finish_reason
    parts, reason = {}, None
    for chunk in oai.chat.completions.create(stream=True, **kw):
        reason = chunk.choices[0].finish_reason or reason
        for t in chunk.choices[0].delta.tool_calls or []:
            p = parts.setdefault(t.index, ["", "", t.id, t.type])
            p[0] += t.function.name or ""
            p[1] += t.function.arguments or ""
    return None, [(n, json.loads(a), i, ty) for n, a, i, ty in (parts[k] for k in sorted(parts))], reason


def test_named_function_is_called(servers):
    oai = client(servers["hermes"])
    for seed in range(3):
        kw = dict(model=NAME, messages=[{"role": "user", "content": "What time is it?"}], tools=TOOLS, seed=seed,
                  tool_choice={"type": "function", "function": {"name": "get_time"}}, max_tokens=300,
                  parallel_tool_calls=False)
        _, calls, reason = answer_of(oai, kw, False)
        assert reason == "tool_calls" and {n for n, *_ in calls} == {"get_time"}
        check_calls(calls, {"get_time"})


# -- the round trip: a tool result sent back ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", sorted(set(SERVED) - {"generic"}))
def test_round_trip_renders_as_transformers(servers, templates, hf_tokenizer, fmt):
    """The conversation with the call and its result, sent by the openai client: the server's prompt
    (/apply-template, llama-server's route) is transformers' rendering, and it is the prompt the chat completion
    evaluates (its usage counts that text's tokens)."""
    srv = servers[fmt]
    for name, messages in CONVERSATIONS.items():
        try:
            expected = transformers_render(hf_tokenizer, templates / SERVED[fmt], messages)
        except Exception as e:  # noqa: BLE001 — Llama 3.x templates take one call per message: so do we (400)
            assert fmt in ("llama3", "functionary-v3.1") and name == "two-calls", e
            with srv.client() as c:
                r = c.post("/apply-template", json={"messages": messages, "tools": TOOLS})
            assert r.status_code == 400 and "chat template failed" in r.json()["error"]["message"]
            continue
        with srv.client() as c:
            prompt = c.post("/apply-template", json={"messages": messages, "tools": TOOLS}).json()["prompt"]
            n_tokens = len(c.post("/tokenize", json={"content": expected, "add_special": not expected.startswith(
                "<s>")}).json()["tokens"])  # BOS unless the template wrote it
        assert prompt == expected, name
        r = client(srv).chat.completions.create(model=NAME, messages=messages, tools=TOOLS, max_tokens=1, seed=1)
        assert r.usage.prompt_tokens == n_tokens, name


def test_generic_prompt_for_a_template_without_tools(servers):
    """stories260K's built-in format cannot show tools: they are described in the system message, earlier calls are
    the JSON the model is asked for, tool results user turns."""
    with servers["generic"].client() as c:
        body = {"messages": CONVERSATIONS["one-call"], "tools": TOOLS}
        prompt = c.post("/apply-template", json=body).json()["prompt"]
    assert json.dumps(TOOLS[0]["function"]) in prompt and '"tool_calls"' in prompt
    assert '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]}' in prompt
    assert '{"temp": 21}' in prompt


def test_bad_tool_requests_are_400(servers):
    oai = client(servers["hermes"])
    msgs = [{"role": "user", "content": "hi"}]
    for kw, match in [(dict(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
                      (dict(tool_choice="required"), "needs tools"),
                      (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "nope"),
                      (dict(tools=[{"type": "function", "function": {"name": "a b"}}]), "name"),
                      (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}),
                       "not several")]:
        with pytest.raises(openai.BadRequestError, match=match):
            oai.chat.completions.create(model=NAME, messages=msgs, max_tokens=4, **kw)


# -- the Python API returns what the server returns -----------------------------------------------------------------
@pytest.fixture(scope="module")
def api(model, templates):
    llm = Llama(str(model), n_ctx=N_CTX, verbose=False, chat_template=(templates / SERVED["hermes"]).read_text())
    yield llm
    llm.close()


def without_ids(obj):
    if isinstance(obj, dict):
        return {k: without_ids(v) for k, v in obj.items() if k not in ("id", "created", "timings", "system_fingerprint",
                                                                        "model")}
    if isinstance(obj, list):
        return [without_ids(v) for v in obj]
    return obj


def test_python_api_returns_what_the_server_returns(api, servers):
    fmt, text, _, _ = SCRIPTS["hermes-two"]
    kw = dict(messages=[{"role": "user", "content": "Weather in Paris, time in Oslo?"}], tools=TOOLS, max_tokens=400,
              seed=3)
    with servers[fmt].client() as c:
        for extra in (dict(grammar=forced(text)),
                      dict(tool_choice="required", temperature=1.0, parallel_tool_calls=False)):
            served = c.post("/v1/chat/completions", json={**kw, **extra}).json()
            ours = api.create_chat_completion(**kw, **extra)
            assert without_ids(ours["choices"]) == without_ids(served["choices"]), extra
            assert ours["usage"]["prompt_tokens"] == served["usage"]["prompt_tokens"]
            chunks = list(api.create_chat_completion(**kw, **extra, stream=True))
            calls = [t for ch in chunks for t in ch["choices"][0]["delta"].get("tool_calls", [])]
            assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
            assert [t["function"]["name"] for t in calls if "id" in t] == \
                [t["function"]["name"] for t in served["choices"][0]["message"]["tool_calls"]]


def test_stories_tokenizer_texts(model):
    """The BOS/EOS texts the rendering tests give transformers are stories260K's."""
    with GGUFFile(model) as g:
        tok = Tokenizer.from_gguf(g)
    assert (tok.token_text(tok.bos_id), tok.token_text(tok.eos_id)) == ("<s>", "</s>")
