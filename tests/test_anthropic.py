"""Anthropic Messages <-> chat completions: tool use survives both directions and streaming."""

import json

import pytest

from mlxstore.moe.anthropic import StreamTranslator, from_chat, to_chat


def test_tool_use_and_results_become_chat_messages():
    chat = to_chat({"max_tokens": 9, "system": [{"type": "text", "text": "be brief"}],
                    "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}],
                    "messages": [{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get",
                                                                    "input": {"x": 1}}]},
                                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                               "content": "42"}]}],
                    "stop_sequences": ["END"], "stream": True})  # fmt: skip
    assert chat["messages"][0] == {"role": "system", "content": "be brief"}
    assert chat["messages"][2]["tool_calls"][0]["function"] == {"name": "get", "arguments": '{"x": 1}'}
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "42"}
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object"} and chat["stop"] == ["END"]
    assert chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("body", [[], {"messages": []}, {"messages": [{"role": "user", "content": "x"}]},
                                  {"max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "image"}]}]}])
def test_bad_bodies_are_value_errors(body):
    with pytest.raises(ValueError):
        to_chat(body)


def test_tool_calls_come_back_as_tool_use():
    call = {"id": "c1", "type": "function", "function": {"name": "get", "arguments": '{"x": 1}'}}
    msg = from_chat({"choices": [{"finish_reason": "tool_calls", "message": {"content": None, "tool_calls": [call]}}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 3}}, "m")  # fmt: skip
    assert msg["content"] == [{"type": "tool_use", "id": "c1", "name": "get", "input": {"x": 1}}]
    assert msg["stop_reason"] == "tool_use" and msg["usage"] == {"input_tokens": 5, "output_tokens": 3}
    s = StreamTranslator("m", 5)
    events = s.feed({"choices": [{"delta": {"content": "ok"}}]})
    events += s.feed({"choices": [{"delta": {"tool_calls": [call]}, "finish_reason": "tool_calls"}]})
    events += s.feed({"choices": [], "usage": {"completion_tokens": 3}})
    names = [n for n, _ in events]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
                     "message_stop"]  # fmt: skip
    assert json.loads(events[5][1]["delta"]["partial_json"]) == {"x": 1}
    assert events[7][1]["delta"]["stop_reason"] == "tool_use"
