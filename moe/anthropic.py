"""Anthropic's Messages API as a translation of mlx_lm.server's chat completions.

A `/v1/messages` request becomes a chat-completions body (system prompt, text, tool use
and tool results, tools, sampling, stop sequences); mlx_lm.server generates as for any
chat request (templates, tool-call parsing, reasoning, stop words); its answer, one JSON
object or an SSE stream of chunks, is rewritten here into Anthropic's shapes. Nothing in
this module generates.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{where}: content must be a string or a list of blocks")
    parts = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise ValueError(f"{where}: only text blocks are accepted here, got {block!r:.80}")
        parts.append(block["text"])
    return "".join(parts)


def _message(m: Any, i: int) -> list[dict]:
    """One Anthropic message as one or more chat-completions messages."""
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
        raise ValueError(f"{where}: must be an object with role 'user' or 'assistant'")
    content = m.get("content")
    if isinstance(content, str):
        return [{"role": m["role"], "content": content}]
    if not isinstance(content, list):
        raise ValueError(f"{where}: content must be a string or a list of blocks")
    out, text, calls = [], [], []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "tool_use" and m["role"] == "assistant":
            calls.append({"id": str(block.get("id", "")), "type": "function",
                          "function": {"name": str(block.get("name", "")),
                                       "arguments": json.dumps(block.get("input") or {})}})  # fmt: skip
        elif kind == "tool_result" and m["role"] == "user":
            out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")),
                        "content": _text(block.get("content", ""), f"{where}.content[{j}]")})  # fmt: skip
        elif kind == "thinking":
            continue  # earlier reasoning is not fed back, as chat templates drop it
        else:
            raise ValueError(f"{where}.content[{j}]: unsupported block {block!r:.80}")
    if text or calls or not out:
        msg: dict[str, Any] = {"role": m["role"], "content": "".join(text)}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def to_chat(body: Any) -> dict:
    """A chat-completions request body for an Anthropic Messages request body."""
    if not isinstance(body, dict):
        raise ValueError("Request should be a JSON dictionary")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise ValueError("messages must be a non-empty list")
    if "max_tokens" not in body:
        raise ValueError("max_tokens is required")
    messages = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text(body["system"], "system")})
    for i, m in enumerate(body["messages"]):
        messages.extend(_message(m, i))
    chat: dict[str, Any] = {"messages": messages, "max_tokens": body["max_tokens"],
                            "model": body.get("model", "default_model"), "stream": body.get("stream", False)}  # fmt: skip
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                         ("stop_sequences", "stop")):  # fmt: skip
        if ours in body:
            chat[theirs] = body[ours]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, dict) and "name" in t for t in tools):
            raise ValueError("tools must be a list of objects with a name")
        chat["tools"] = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                          "parameters": t.get("input_schema", {})}} for t in tools]  # fmt: skip
    if chat["stream"] is True:
        chat["stream_options"] = {"include_usage": True}
    return chat


def _tool_use(call: dict) -> dict:
    fn = call.get("function", {})
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except json.JSONDecodeError:
        args = {"arguments": fn.get("arguments")}
    return {"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex}", "name": fn.get("name", ""),
            "input": args}  # fmt: skip


def error(status: int, message: str) -> dict:
    kind = "overloaded_error" if status == 503 else "invalid_request_error" if status < 500 else "api_error"
    return {"type": "error", "error": {"type": kind, "message": message}}


def from_chat(resp: dict, model: str) -> dict:
    """An Anthropic message for a (non-streamed) chat.completion response."""
    choice = resp["choices"][0]
    msg = choice.get("message", {})
    content = []
    if msg.get("reasoning"):
        content.append({"type": "thinking", "thinking": msg["reasoning"], "signature": ""})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    content.extend(_tool_use(c) for c in msg.get("tool_calls") or [])
    usage = resp.get("usage", {})
    return {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)}}  # fmt: skip


class StreamTranslator:
    """Chat-completion chunks in, Anthropic stream events `(name, data)` out."""

    def __init__(self, model: str, input_tokens: int = 0):
        self.model, self.input_tokens = model, input_tokens
        self.started = False
        self.block: str | None = None  # the kind of the open content block
        self.index = -1
        self.stop_reason = "end_turn"

    def _open(self, kind: str, start: dict) -> list[tuple[str, dict]]:
        events = self._close()
        self.index += 1
        self.block = kind
        return events + [("content_block_start", {"type": "content_block_start", "index": self.index,
                                                  "content_block": start})]  # fmt: skip

    def _close(self) -> list[tuple[str, dict]]:
        if self.block is None:
            return []
        self.block = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _delta(self, delta: dict) -> tuple[str, dict]:
        return ("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def feed(self, chunk: dict) -> list[tuple[str, dict]]:
        events = []
        if not self.started:
            self.started = True
            events.append(("message_start", {"type": "message_start", "message": {
                "id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}}))  # fmt: skip
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning"):
                if self.block != "thinking":
                    events += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                events.append(self._delta({"type": "thinking_delta", "thinking": delta["reasoning"]}))
            if delta.get("content"):
                if self.block != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                use = _tool_use(call)
                events += self._open("tool_use", {**use, "input": {}})
                events.append(self._delta({"type": "input_json_delta", "partial_json": json.dumps(use["input"])}))
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        if chunk.get("usage"):
            events += self._close()
            events.append(("message_delta", {"type": "message_delta",
                                             "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                             "usage": {"output_tokens": chunk["usage"].get("completion_tokens", 0)}}))  # fmt: skip
            events.append(("message_stop", {"type": "message_stop"}))
        return events


def sse(events: list[tuple[str, dict]]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)
