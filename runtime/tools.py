"""Tool calls, as OpenAI's chat API has them (`tools`, `tool_choice`, `parallel_tool_calls`, assistant messages with
`tool_calls`, `role: "tool"` results), in the formats models are trained on:

- `hermes`: Hermes 2/3, Qwen2.5, Qwen3, QwQ: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block
  per call;
- `llama3`: Llama 3.1-3.3: a JSON object `{"name": ..., "parameters": {...}}`, or after `<|python_tag|>` such objects
  (`;`-separated), a built-in tool's `name.call(key=value, ...)` or code for the `python`/`ipython` tool;
- `mistral`: Mistral Nemo: `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}, ...]`; `mistral-args`: Mistral
  Small 3.2, Devstral, Ministral 3: `[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}` per call (`[CALL_ID]id` when the
  template writes it); the model's call ids are kept (Mistral's templates want them back: 9 letters or digits);
- `functionary-v3.1`: `<function=name>{...}</function>` per call, `<|python_tag|>` code for the python tool;
  `functionary-v3.2`: after the prompt's `>>>`, `name\n{...}` per call and `all\ntext` for the content, joined by
  `>>>` (its template takes each call's arguments as OpenAI's JSON text);
- `generic`: for a template that does not show tools (and the built-in formats): a system prompt listing the tools and
  the answer `{"tool_calls": [{"name": ..., "arguments": {...}}]}` (as llama-server's generic format), or text.

The format is read from the template's own text. A template that shows `tools` gets them as transformers'
`apply_chat_template(..., tools=...)` gives them, with the conversation in transformers' shape (None fields dropped,
each call's `arguments` a JSON object, not OpenAI's JSON text). `tool_choice: "required"` or a named function
constrains the generation with a grammar (runtime.json_schema) of the format's call whose arguments follow the
declared parameters schema; `"none"` renders no tools and parses nothing. The output is parsed back into OpenAI's
`tool_calls` (`finish_reason: "tool_calls"`); when it does not parse, or names a function not declared, it is the
answer's content. `ToolStream` turns the generated text into streamed deltas as OpenAI streams them: content while it
cannot be the start of a call, then each call's id and name, then its arguments."""
from __future__ import annotations

import ast
import json
import re
import random
import string
import uuid
from dataclasses import dataclass, field, replace

from common.errors import UserError
from runtime.chat import ChatFormat, prompt_text, prompt_tokens
from runtime.grammar import Grammar
from runtime.json_schema import SchemaConverter, literal

CHOICES = ("auto", "none", "required")
PYTHON_TOOLS = ("python", "ipython", "code_interpreter")


# -- the request: tools and the choice ----------------------------------------------------------------------------
def check_tools(tools) -> list[dict]:
    """OpenAI's tool list: [{"type": "function", "function": {"name", "description"?, "parameters"?}}]; names unique."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise UserError("tools must be a list of {\"type\": \"function\", \"function\": {...}}")
    names = set()
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise UserError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise UserError(f"tools[{i}].function.name must be 1-64 letters, digits, _ . or -, got {name!r}")
        if name in names:
            raise UserError(f"tools[{i}]: the function {name!r} is declared twice")
        if not isinstance(fn.get("parameters", {}), dict):
            raise UserError(f"tools[{i}].function.parameters must be a JSON Schema object")
        names.add(name)
    return tools


def check_choice(choice, tools: list[dict]) -> str | dict:
    """"auto" (the default with tools), "none" (the default without), "required", or {"type": "function",
    "function": {"name": N}} naming a declared function."""
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise UserError(f"tool_choice must be auto, none, required or a function, got {choice!r}")
        if choice == "required" and not tools:
            raise UserError("tool_choice required needs tools")
        return choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise UserError('tool_choice must be auto, none, required or {"type": "function", "function": {"name": ...}}')
    if name not in {t["function"]["name"] for t in tools}:
        raise UserError(f"tool_choice names the function {name!r}, which tools does not declare")
    return {"type": "function", "function": {"name": name}}


# -- the conversation, as templates take it ------------------------------------------------------------------------
def template_messages(messages: list[dict], text_arguments: bool = False) -> list[dict]:
    """OpenAI's messages in transformers' shape: fields that are None dropped, but `content` always there (OpenAI's
    null content of a message that only calls tools is "": templates such as Qwen3's read it), each tool call's
    `arguments` a JSON object (OpenAI sends it as JSON text; text that is not JSON stays text) unless the template
    takes `text_arguments`."""
    out = []
    for m in messages:
        m = {"content": "", **{k: v for k, v in m.items() if v is not None}}
        if m.get("tool_calls"):
            m["tool_calls"] = [_template_call(c, text_arguments) for c in m["tool_calls"]]
        out.append(m)
    return out


def _template_call(call: dict, text_arguments: bool) -> dict:
    fn = dict(call.get("function") or {})
    if text_arguments:
        if not isinstance(fn.get("arguments"), str):
            fn["arguments"] = json.dumps(fn.get("arguments", {}), ensure_ascii=False)
    elif isinstance(fn.get("arguments"), str):
        try:
            fn["arguments"] = json.loads(fn["arguments"])
        except json.JSONDecodeError:
            pass
    return {**{k: v for k, v in call.items() if v is not None}, "function": fn}


def generic_messages(messages: list[dict], tools: list[dict]) -> list[dict]:
    """For a format that does not show tools: the tools described in the system message, earlier calls written as
    the JSON the model is asked for, and tool results as user turns."""
    described = generic_prompt(tools) if tools else ""
    out: list[dict] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": c["function"].get("arguments")}
                     for c in template_messages([m])[0]["tool_calls"]]
            content = json.dumps({"tool_calls": calls}, ensure_ascii=False)
        elif role == "tool":
            role, content = "user", f"Result of the tool call {m.get('tool_call_id') or m.get('name') or ''}".rstrip() \
                + f":\n{content}"
        out.append({"role": role, "content": content})
    if described:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + described}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out


def generic_prompt(tools: list[dict]) -> str:
    listed = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return ("You can call these tools (JSON Schema of each function's parameters):\n" + listed + "\n\nTo call tools,"
            ' answer with JSON only: {"tool_calls": [{"name": "<function name>", "arguments": {...}}]}. Otherwise'
            ' answer in plain text.')


# -- formats ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolFormat:
    name: str
    markers: tuple[str, ...] = ()   # text that starts a call
    json_start: bool = False        # a call may also be the whole answer, as a JSON object
    call_id: bool = False           # each call carries its id (Mistral's, 9 letters or digits)
    hold_all: bool = False          # the answer is only known at its end (functionary v3.2's recipients)
    text_arguments: bool = False    # the template takes a call's arguments as JSON text, not as an object

    def parse(self, text: str, names: set[str]) -> tuple[str | None, list[tuple]] | None:
        """(content, [(name, arguments, the model's id or None)]) when `text` holds calls of declared functions,
        else None."""
        return PARSERS[self.name](text, names)

    def new_id(self) -> str:
        """A call's id: Mistral's templates take 9 letters or digits, the others OpenAI's call_ ids."""
        if self.name.startswith("mistral"):
            return "".join(random.choices(string.ascii_letters + string.digits, k=9))
        return f"call_{uuid.uuid4().hex[:24]}"

    def hold(self, text: str) -> int:
        """Where a call starts or may start in `text` (its length when none can): streamed content stops there."""
        if self.hold_all or self.json_start and (not text.strip() or text.lstrip().startswith("{")):
            return 0
        at = len(text)
        for marker in self.markers:
            i = text.find(marker)
            if i >= 0:
                at = min(at, i)
                continue
            for k in range(min(len(marker) - 1, len(text)), 0, -1):  # a marker's beginning at the end
                if text.endswith(marker[:k]):
                    at = min(at, len(text) - k)
                    break
        return at


FORMATS = {"hermes": ToolFormat("hermes", ("<tool_call>",)),
           "llama3": ToolFormat("llama3", ("<|python_tag|>",), json_start=True),
           "mistral": ToolFormat("mistral", ("[TOOL_CALLS]",), call_id=True),
           "mistral-args": ToolFormat("mistral-args", ("[TOOL_CALLS]",)),
           "functionary-v3.1": ToolFormat("functionary-v3.1", ("<function=", "<|python_tag|>")),
           "functionary-v3.2": ToolFormat("functionary-v3.2", hold_all=True, text_arguments=True),
           "generic": ToolFormat("generic", json_start=True)}


def tool_format(fmt: ChatFormat) -> ToolFormat:
    """The call format a chat template teaches, read from its text; `generic` when it does not show tools."""
    source = getattr(fmt, "source", "") if fmt.supports_tools else ""
    if "<tool_call>" in source:
        return FORMATS["hermes"]
    if "<function=" in source:
        return FORMATS["functionary-v3.1"]
    if ">>>" in source and "recipient" in source:
        return FORMATS["functionary-v3.2"]
    if "[TOOL_CALLS]" in source:
        if "[ARGS]" in source:
            return replace(FORMATS["mistral-args"], call_id="[CALL_ID]" in source)
        return FORMATS["mistral"]
    if "<|python_tag|>" in source or '"parameters"' in source and "<|eot_id|>" in source:
        return FORMATS["llama3"]
    return FORMATS["generic"]


# -- parsing ------------------------------------------------------------------------------------------------------
_DECODER = json.JSONDecoder()


def _objects(text: str, sep: str = "") -> list | None:
    """The JSON values `text` consists of (separated by whitespace and `sep`), or None."""
    out, i, text = [], 0, text.strip()
    while i < len(text):
        try:
            value, i = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        out.append(value)
        while i < len(text) and (text[i].isspace() or text[i] in sep):
            i += 1
    return out


def _call(obj, names: set[str], keys=("arguments", "parameters")):
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = next((obj[k] for k in keys if k in obj), {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    call_id = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else None
    return (obj["name"], args, call_id) if isinstance(args, dict) else None


def _calls(objs, names) -> list | None:
    calls = [_call(o, names) for o in objs or []]
    return calls if calls and all(calls) else None


def _content(*parts: str) -> str | None:
    """The text around calls, without the whitespace at its end (None when only whitespace), as streamed."""
    text = "".join(parts).rstrip()
    return text if text.strip() else None


def parse_hermes(text: str, names: set[str]):
    blocks = list(re.finditer(r"<tool_call>(.*?)(?:</tool_call>|$)", text, re.S))
    calls = [_call(o, names) for b in blocks for o in (_objects(b.group(1)) or [None])]
    if not blocks or not all(calls):
        return None
    rest = re.sub(r"<tool_call>.*?(?:</tool_call>|$)", "", text, flags=re.S)
    return _content(rest), calls


def parse_llama3(text: str, names: set[str]):
    head, tag, tail = text.partition("<|python_tag|>")
    if not tag:
        calls = _calls(_objects(text, ";"), names) if text.lstrip().startswith("{") else None
        return (None, calls) if calls else None
    calls = _calls(_objects(tail, ";"), names) or _builtin_call(tail.strip(), names) or _python_call(tail, names)
    return (_content(head), calls) if calls else None


def _builtin_call(code: str, names: set[str]):
    """`brave_search.call(query="...")`: a built-in tool's call as Llama 3.1 writes it (keyword literals only)."""
    try:
        node = ast.parse(code, mode="eval").body
        ok = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "call"
              and isinstance(node.func.value, ast.Name) and node.func.value.id in names and not node.args)
        return [(node.func.value.id, {k.arg: ast.literal_eval(k.value) for k in node.keywords}, None)] if ok else None
    except (SyntaxError, ValueError):
        return None


def parse_mistral(text: str, names: set[str]):
    head, tag, tail = text.partition("[TOOL_CALLS]")
    objs = _objects(tail) if tag else None
    calls = _calls(objs[0] if objs and len(objs) == 1 and isinstance(objs[0], list) else objs, names)
    return (_content(head), calls) if calls else None


def parse_mistral_args(text: str, names: set[str]):
    parts = text.split("[TOOL_CALLS]")
    calls = []
    for part in parts[1:]:
        head, tag, args = part.partition("[ARGS]")
        name, _, call_id = head.partition("[CALL_ID]")
        objs = _objects(args)
        call = _call({"name": name.strip(), "arguments": objs[0], "id": call_id.strip()}, names) \
            if tag and objs and len(objs) == 1 else None
        if call is None:
            return None
        calls.append(call)
    return (_content(parts[0]), calls) if calls else None


def _python_call(code: str, names: set[str]):
    python = next((n for n in PYTHON_TOOLS if n in names), None)
    return [(python, {"code": code.strip()}, None)] if python else None


def parse_functionary_v31(text: str, names: set[str]):
    head, tag, tail = text.partition("<|python_tag|>")
    blocks = list(re.finditer(r"<function=([^>]*)>(.*?)(?:</function>|$)", head, re.S))
    calls = [_call({"name": b.group(1), "arguments": o[0] if o and len(o) == 1 else None}, names)
             for b in blocks for o in [_objects(b.group(2))]]
    if tag:
        calls += _python_call(tail, names) or [None]
    if not calls or not all(calls):
        return None
    return _content(re.sub(r"<function=[^>]*>.*?(?:</function>|$)", "", head, flags=re.S)), calls


def parse_functionary_v32(text: str, names: set[str]):
    """The answer after the prompt's `>>>`: `recipient\nbody` parts joined by `>>>`; recipient `all` is content."""
    content, calls = [], []
    for part in text.split(">>>"):
        recipient, _, body = part.partition("\n")
        recipient = recipient.strip()
        if recipient == "all":
            content.append(body)
            continue
        objs = _objects(body)
        call = _call({"name": recipient, "arguments": objs[0]}, names) if objs and len(objs) == 1 else None
        call = call or (_python_call(body, {recipient}) if recipient in PYTHON_TOOLS and recipient in names else None)
        if call is None:
            return None
        calls += call if isinstance(call, list) else [call]
    return _content(*content), calls


def parse_generic(text: str, names: set[str]):
    objs = _objects(text) if text.lstrip().startswith("{") else None
    if not objs or len(objs) != 1 or not isinstance(objs[0], dict):
        return None
    obj = objs[0]
    if "tool_calls" in obj and isinstance(obj["tool_calls"], list):
        calls = _calls(obj["tool_calls"], names)
    elif "tool_call" in obj:
        calls = _calls([obj["tool_call"]], names)
    else:
        calls = _calls([obj], names)
    return (None, calls) if calls else None


PARSERS = {"hermes": parse_hermes, "llama3": parse_llama3, "mistral": parse_mistral,
           "mistral-args": parse_mistral_args, "functionary-v3.1": parse_functionary_v31,
           "functionary-v3.2": parse_functionary_v32, "generic": parse_generic}


# -- constrained calls --------------------------------------------------------------------------------------------
NAMED_OUTSIDE = {"mistral-args": '{name}{call_id} "[ARGS]" {args}',
                 "functionary-v3.1": '"<function=" {name} ">" {args} "</function>"',
                 "functionary-v3.2": '{name} "\\n" {args}'}


def call_grammar(fmt: ToolFormat, tools: list[dict], only: str | None, parallel: bool) -> Grammar:
    """The grammar of an answer that is nothing but calls in `fmt` (one, or with `parallel` one or more) of the
    declared functions (or of `only`), their arguments valid for the declared parameters."""
    chosen = [t["function"] for t in tools if only is None or t["function"]["name"] == only]
    conv = SchemaConverter({})
    args_key = "parameters" if fmt.name == "llama3" else "arguments"
    alternatives = []
    for fn in chosen:
        params = fn.get("parameters") or {"type": "object"}
        conv.root_schema = params  # `$ref`s resolve within the function's own parameters
        if fmt.name in NAMED_OUTSIDE:  # the name written before the arguments' JSON
            name, args = literal(fn["name"]), conv.visit(params, fn["name"] + "-args")
            call_id = ' "[CALL_ID]" [a-zA-Z0-9]{9}' if fmt.call_id else ""
            alternatives.append(NAMED_OUTSIDE[fmt.name].format(name=name, call_id=call_id, args=args))
            continue
        properties = {"name": {"const": fn["name"]}, args_key: params}
        if fmt.call_id:
            properties["id"] = {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}
        schema = {"type": "object", "properties": properties, "required": list(properties),
                  **{k: params[k] for k in ("$defs", "definitions") if k in params}}
        conv.root_schema = schema
        alternatives.append(conv.visit(schema, fn["name"] + "-call"))
    conv.rules["any-tool-call"] = " | ".join(f"( {a} )" for a in alternatives)
    one = {"hermes": '"<tool_call>\\n" any-tool-call "</tool_call>"',
           "mistral-args": '"[TOOL_CALLS]" any-tool-call'}.get(fmt.name, "any-tool-call")
    sep = {"hermes": '"\\n"', "mistral": '"," space', "generic": '"," space', "functionary-v3.2": '">>>"'
           }.get(fmt.name, "")
    calls = f"{one} ( {sep} {one} )*" if parallel and fmt.name != "llama3" else one
    conv.rules["root"] = {"mistral": f'"[TOOL_CALLS]" "[" {calls} "]"',
                          "generic": f'"{{" space "\\"tool_calls\\"" space ":" space "[" space {calls} "]" space "}}"'
                          }.get(fmt.name, calls)
    return Grammar.parse(conv.grammar())


# -- one request ----------------------------------------------------------------------------------------------------
@dataclass
class ToolPlan:
    """What a chat request with tools needs: its prompt, its grammar, and its answer read back into tool calls.
    `active` is False for a request without tools or with tool_choice "none": the plain chat then."""
    chat: ChatFormat
    tools: list[dict]
    choice: str | dict
    parallel: bool = True
    format: ToolFormat = field(init=False)

    def __post_init__(self):
        self.tools = check_tools(self.tools)
        self.choice = check_choice(self.choice, self.tools)
        self.format = tool_format(self.chat)

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    def needed(self, messages: list[dict]) -> bool:
        """Whether the conversation needs this module's rendering: tools to show, or calls and results in it."""
        return self.active or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)

    @property
    def names(self) -> set[str]:
        return {t["function"]["name"] for t in self.tools}

    def prompt_tokens(self, tokenizer, messages: list[dict]) -> list[int]:
        """The conversation with the tools shown by the template (generic prompt when it cannot show them)."""
        return prompt_tokens(self.chat, tokenizer, *self.template_input(messages))

    def prompt_text(self, tokenizer, messages: list[dict]) -> str:
        return prompt_text(self.chat, tokenizer, *self.template_input(messages))

    def template_input(self, messages: list[dict]) -> tuple[list[dict], list[dict] | None]:
        """The messages and tools the chat format is given."""
        tools = self.tools if self.active else None
        if self.chat.supports_tools:
            return template_messages(messages, self.format.text_arguments), tools
        return generic_messages(messages, tools or []), None

    def grammar(self) -> Grammar | None:
        """For `required` or a named function: the calls' grammar; else None (free text)."""
        if not self.active or self.choice == "auto":
            return None
        only = self.choice["function"]["name"] if isinstance(self.choice, dict) else None
        return call_grammar(self.format, self.tools, only, self.parallel)

    def parse(self, text: str) -> tuple[str | None, list[dict]]:
        """(content, OpenAI tool_calls): the text itself and no calls when inactive or when it holds none."""
        found = self.format.parse(text, self.names) if self.active else None
        if not found:
            return text, []
        content, calls = found
        if not self.parallel:
            calls = calls[:1]
        return content, [openai_call(name, args, call_id or self.format.new_id()) for name, args, call_id in calls]

    def message(self, text: str, finish_reason: str) -> tuple[dict, str]:
        """The assistant message and the finish reason ("tool_calls" when it calls tools)."""
        content, calls = self.parse(text)
        if not calls:
            return {"role": "assistant", "content": content or ""}, finish_reason
        return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"

    def stream(self) -> "ToolStream":
        return ToolStream(self)


def openai_call(name: str, args: dict, call_id: str) -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


class ToolStream:
    """One choice's generated text as streamed deltas: content as long as no call can have started, then at the end
    each call as OpenAI streams it (its index, id, type and name with empty arguments, then the arguments), or the
    held-back text as content when it held no call."""

    def __init__(self, plan: ToolPlan):
        self.plan, self.text, self.sent = plan, "", 0

    def feed(self, piece: str) -> list[dict]:
        self.text += piece
        end = len(self.text)
        if self.plan.active:  # whitespace before a call is not content: it waits for what follows
            end = len(self.text[:self.plan.format.hold(self.text)].rstrip())
        if end <= self.sent:
            return []
        delta, self.sent = {"content": self.text[self.sent:end]}, end
        return [delta]

    def end(self, finish_reason: str) -> tuple[list[dict], str]:
        """The last deltas and the finish reason."""
        content, calls = self.plan.parse(self.text)
        sent, content = self.text[:self.sent], content or ""  # the content not streamed yet comes now
        deltas = [{"content": content[len(sent):]}] if content.startswith(sent) and content != sent else []
        if not calls:
            return deltas, finish_reason
        for i, call in enumerate(calls):
            fn = call["function"]
            deltas.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                           "function": {"name": fn["name"], "arguments": ""}}]})
            deltas.append({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]})
        return deltas, "tool_calls"
