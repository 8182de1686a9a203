"""Chat requests -> prompt text, with the tool definitions in the format the model was trained on.

- "llama3": the tokenizer's own chat template, given `tools` (Llama 3.x: tool JSON in the system turn with
  "Environment: ipython", calls as `{"name", "parameters"}`, results in the `ipython` role).
- "la": the CoALM-IT LA format (`engine.tool_formats`, the same text the training rows carry): the system turn is
  the task block, the tools as Hammer-style JSON and the format block; calls are a JSON list `[{"name", "arguments"}]`.

The format is `--tool-format`, else `"coalm_tool_format"` in the adapter's adapter_config.json, else "llama3" for
a Llama 3 vocabulary and "la" otherwise (ChatML templates such as SmolLM2's have no tool syntax of their own).
A named `tool_choice` starts the assistant turn with the call's opening (the name filled in), so the model completes
the arguments of that function.
"""

from __future__ import annotations

import json
from pathlib import Path

from jinja2.exceptions import TemplateError

from engine.tool_formats import la_instruction, la_output, la_tools

from .protocol import APIError, ChatRequest, NamedToolChoice

FORMATS = ("llama3", "la")


def choose_format(flag: str | None, tokenizer, adapter: str | None) -> str:
    if flag and flag != "auto":
        if flag not in FORMATS:
            raise ValueError(f"--tool-format must be auto or one of {', '.join(FORMATS)}, got {flag!r}")
        if flag == "llama3" and tokenizer.name != "llama3":
            raise ValueError("--tool-format llama3 needs a Llama 3 vocabulary and template; this model is "
                             f"{tokenizer.name}: use --tool-format la")
        return flag
    if adapter:
        cfg = Path(adapter) / "adapter_config.json"
        fmt = json.loads(cfg.read_text()).get("coalm_tool_format") if cfg.is_file() else None
        if fmt in FORMATS:
            return fmt
    return "llama3" if tokenizer.name == "llama3" else "la"


def _arguments(call) -> dict:
    try:
        args = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise APIError(f"tool call {call.id}: function.arguments must be a JSON object string", param="messages")
    return args


def _messages(req: ChatRequest, fmt: str, tools: list[dict] | None) -> list[dict]:
    out = []
    for m in req.messages:
        role = "system" if m.role == "developer" else m.role
        msg = {"role": role, "content": m.text()}
        if m.role == "assistant" and m.tool_calls:
            calls = [{"name": c.function.name, "arguments": _arguments(c)} for c in m.tool_calls]
            if fmt == "la":
                msg["content"] = la_output(calls)
            else:  # the template renders the calls (HF convention: arguments as a dict)
                msg["tool_calls"] = [{"type": "function", "function": c} for c in calls]
        if m.role == "tool":
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    if fmt == "la" and tools:
        text = la_instruction(la_tools(tools))
        if out[0]["role"] == "system":  # the LA block leads; an operator's own system text follows it
            out[0] = {"role": "system", "content": text + ("\n\n" + out[0]["content"] if out[0]["content"] else "")}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def render(req: ChatRequest, tokenizer, fmt: str) -> tuple[str, str]:
    """(prompt text, forced assistant prefix). Tools are left out when tool_choice is "none"."""
    tools = [t.function.model_dump(exclude_none=True) for t in req.tools or []] if req.tool_choice != "none" else []
    msgs = _messages(req, fmt, tools)
    try:
        if fmt == "llama3" and tools:
            text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True,
                                                 tools=[{"type": "function", "function": t} for t in tools])
        else:
            text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    except (TemplateError, TypeError, ValueError) as e:  # a template may refuse a conversation (roles out of order)
        raise APIError(f"the chat template cannot render these messages: {e}", param="messages") from None
    prefix = ""
    if isinstance(req.tool_choice, NamedToolChoice):
        name = json.dumps(req.tool_choice.function["name"])
        prefix = f'{{"name": {name}, "parameters":' if fmt == "llama3" else f'[{{"name": {name}, "arguments":'
    return text + prefix, prefix
