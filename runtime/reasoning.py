"""Reasoning ("thinking") read out of the assistant's text as llama-server b11434 reads it (`--reasoning-format`):
the text between the template's thinking tags, at the start of the answer, becomes the message's
`reasoning_content`, the rest its `content`.

How llama.cpp finds the tags (common/chat-diff-analyzer.cpp, analyze_reasoning), and so how this module does:
- an earlier answer rendered with a `reasoning_content` and without: the markers (`<...>` or `[...]`) around the
  thought, with the whitespace next to them, are the start and end tags;
- the generation prompt rendered with `enable_thinking` false and true: text the template adds when thinking is on
  (at the end) is the start tag; text it adds when thinking is off (`<think>\\n</think>`) ends with the end tag,
  after the start tag;
- the older Qwen/DeepSeek templates that only cut `</think>` out of earlier answers: `<think>`/`</think>`.
The generation prompt (what `add_generation_prompt` adds) is read before the model's text from the start tag on, so
a prompt that opens the thought itself (DeepSeek-R1's `<think>\\n`) leaves the model inside it. The thought must open
the answer; a thought that never closes is all reasoning; a thought of only whitespace is none. Whitespace around a
tag, as the template writes it, is optional in the model's text. `deepseek-legacy` and `auto` extract as `deepseek`
does (b11434 no longer reads `reasoning_in_content`); `none` leaves the text as it is."""
from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import UserError

FORMATS = ("none", "deepseek", "deepseek-legacy", "auto")
DEFAULT_FORMAT = "deepseek"  # llama.cpp's common_params.reasoning_format (its --help says auto: the same split)

_USER = "U_USER_MSG Hello END_U"  # llama.cpp's probe texts
_ANSWER = "A_ASST_MSG I can help END_A"
_THOUGHT = "REASON_PART I am thinking END_R"
_MARKER = r"(?:<[^<>]*>|\[[^\[\]]*\])"


@dataclass(frozen=True)
class Tags:
    start: str  # with the whitespace the template writes around it; "" for a thought closed by `end` alone
    end: str


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise UserError(f"unknown reasoning format {name!r}; one of {', '.join(FORMATS)}")
    return name


def template_tags(fmt) -> Tags | None:
    """The thinking tags a Jinja chat format teaches, or None (a built-in format, or a template without them)."""
    if not hasattr(fmt, "source"):
        return None
    if fmt.source not in _TAGS:
        _TAGS[fmt.source] = _read_tags(fmt)
    return _TAGS[fmt.source]


_TAGS: dict[str, Tags | None] = {}  # by template text: read once per template


def _read_tags(fmt) -> Tags | None:
    start, end = _tags_around_a_thought(fmt)
    switch_start, switch_end = _tags_of_the_thinking_switch(fmt)
    start, end = start or switch_start, end or switch_end
    if not start and not end and "content.split('</think>')" in fmt.source and "reasoning_content" not in fmt.source:
        start, end = "<think>", "</think>"
    return Tags(start, end) if end else None


def _render(fmt, messages, add_generation_prompt, **context) -> str | None:
    try:
        return fmt.with_context(context).render(messages, "", "", add_generation_prompt=add_generation_prompt)
    except UserError:  # the template refuses the probe
        return None


def _tags_around_a_thought(fmt) -> tuple[str, str]:
    user = {"role": "user", "content": _USER}
    answer = {"role": "assistant", "content": _ANSWER}
    plain = _render(fmt, [user, answer], False, enable_thinking=True)
    shown = _render(fmt, [user, {**answer, "reasoning_content": _THOUGHT}], False, enable_thinking=True)
    if plain is None or shown is None or shown == plain or _THOUGHT not in shown:
        return "", ""
    i = shown.index(_THOUGHT)
    pre = re.search(_MARKER + r"\s*$", shown[:i])
    post = re.match(r"\s*" + _MARKER + r"\s*", shown[i + len(_THOUGHT):])
    if post is None:
        return "", ""
    return (pre.group(0) if pre else ""), post.group(0)


def _tags_of_the_thinking_switch(fmt) -> tuple[str, str]:
    user = [{"role": "user", "content": _USER}]
    off = _render(fmt, user, True, enable_thinking=False)
    on = _render(fmt, user, True, enable_thinking=True)
    if off is None or on is None:
        return "", ""
    p = len(_common_prefix(off, on))
    s = len(_common_prefix(off[p:][::-1], on[p:][::-1]))
    only_off, only_on = off[p:len(off) - s], on[p:len(on) - s]
    if not only_off.strip() and only_on.strip() and on.endswith(only_on.strip()):
        return only_on, ""  # no end tag known: not a split llama.cpp makes either
    if not only_on.strip() and only_off.strip() and off.endswith(only_off.strip()):
        markers = [m for m in re.findall(_MARKER + r"|[^<\[]+|[<\[]", off) if m.strip()]  # llama.cpp's segments
        start = markers[-2] if len(markers) >= 2 and markers[-1] == only_off.strip() and \
            re.fullmatch(_MARKER, markers[-2]) else ""
        return start, only_off
    return "", ""


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def generation_prompt(fmt, messages: list[dict]) -> str:
    """What the template adds for the assistant's turn: the rendering with the generation prompt past the one
    without (llama.cpp's common_chat_template_generation_prompt)."""
    without = _render(fmt, messages, False)
    with_ = _render(fmt, messages, True)
    if without is None or with_ is None:
        return ""
    return with_[len(_common_prefix(without, with_)):]


def _tag_at(text: str, i: int, tag: str) -> int | None:
    """The end of `tag` read at text[i:], its leading and trailing whitespace optional (llama.cpp's optspace);
    None if the tag is not there."""
    core = tag.strip()
    lead, trail = tag[:len(tag) - len(tag.lstrip())], tag[len(tag.rstrip()):]
    for c in lead:
        i += text.startswith(c, i)
    if not text.startswith(core, i):
        return None
    i += len(core)
    for c in trail:
        i += text.startswith(c, i)
    return i


def _could_become(text: str, i: int, tag: str) -> bool:
    """Whether text[i:] is cut short inside `tag` (more text could complete it)."""
    rest = text[i:].lstrip()
    core = tag.strip()
    return len(rest) < len(core) and core.startswith(rest)


class Splitter:
    """One answer's split, given the tags and the prompt's generation prompt."""

    def __init__(self, tags: Tags, gen_prompt: str, extract: bool = True):
        """extract False (`none`): all is content, from the start tag the generation prompt opened on."""
        self.tags, self.extract = tags, extract
        core = tags.start.strip()
        # the part of the generation prompt the parse reads: from the start tag on (all of it for an empty start)
        self.opened = "" if not core else gen_prompt[gen_prompt.find(core):] if core in gen_prompt else ""

    def split(self, output: str, partial: bool = False) -> tuple[str, str]:
        """(reasoning, content) of the model's text; `partial`: the text so far, holding back what a later piece
        could still turn into a tag."""
        text, tags = self.opened + output, self.tags
        if not self.extract:
            return "", text
        # the thought opens the answer (whitespace before its tag skipped)
        pos = _tag_at(text, len(text) - len(text.lstrip()), tags.start) if tags.start.strip() else 0
        if pos is None:
            if partial and _could_become(text, 0, tags.start):
                return "", ""
            return "", output
        end = tags.end.strip()
        j = text.find(end, pos)
        if j < 0:
            thought = text[pos:]
            if partial:  # a tail that may be the end tag's beginning waits
                for k in range(min(len(end) - 1, len(thought)), 0, -1):
                    if end.startswith(thought[-k:]):
                        thought = thought[:-k]
                        break
            return _visible(thought), ""
        return _visible(text[pos:j]), text[_tag_at(text, j, tags.end):]

    def stream(self) -> SplitStream:
        return SplitStream(self)


def _visible(thought: str) -> str:
    return thought if thought.strip() else ""


class SplitStream:
    """The split of a streamed answer: each piece's new reasoning and new content (llama-server's deltas)."""

    def __init__(self, splitter: Splitter):
        self.splitter, self.text, self.reasoning, self.content = splitter, "", "", ""

    def _advance(self, partial: bool) -> tuple[str, str]:
        reasoning, content = self.splitter.split(self.text, partial)
        new_r = reasoning[len(self.reasoning):] if reasoning.startswith(self.reasoning) else ""
        new_c = content[len(self.content):] if content.startswith(self.content) else ""
        self.reasoning += new_r
        self.content += new_c
        return new_r, new_c

    def feed(self, piece: str) -> tuple[str, str]:
        self.text += piece
        return self._advance(True)

    def end(self) -> tuple[str, str]:
        return self._advance(False)


def splitter(fmt, reasoning_format: str, messages: list[dict]) -> Splitter | None:
    """The split for a chat rendered with `fmt`, or None (a template without thinking tags: all is content)."""
    extract = check_format(reasoning_format) != "none"
    tags = template_tags(fmt)
    return Splitter(tags, generation_prompt(fmt, messages), extract) if tags else None


def thinking_format(fmt, kwargs: dict | None):
    """The chat format as llama-server renders a request with it: `enable_thinking` true for a template with
    thinking tags (its `--reasoning auto`), then the request's `chat_template_kwargs` (`enable_thinking` a boolean,
    as llama-server insists)."""
    kwargs = kwargs or {}
    if "enable_thinking" in kwargs and not isinstance(kwargs["enable_thinking"], bool):
        raise UserError("invalid type for \"enable_thinking\" (expected boolean, got "
                        f"{type(kwargs['enable_thinking']).__name__})")
    automatic = template_tags(fmt) and "enable_thinking" not in getattr(fmt, "context", {})  # not set at startup
    context = {**({"enable_thinking": True} if automatic else {}), **kwargs}
    return fmt.with_context(context) if context else fmt


def startup_context(kwargs_json: str | None, reasoning: str) -> dict:
    """The template variables of `--chat-template-kwargs JSON` and `--reasoning on|off|auto` (llama-server's: on/off
    set `enable_thinking`, auto leaves it to the template's tags)."""
    import json
    context = {}
    if kwargs_json:
        try:
            context = json.loads(kwargs_json)
        except ValueError as e:
            raise UserError(f"--chat-template-kwargs must be a JSON object: {e}") from None
        if not isinstance(context, dict):
            raise UserError("--chat-template-kwargs must be a JSON object")
    if reasoning not in ("on", "off", "auto"):
        raise UserError(f"--reasoning must be on, off or auto, got {reasoning!r}")
    if reasoning != "auto":
        context["enable_thinking"] = reasoning == "on"
    return context
