"""`mlxstore serve`: real OpenAI and Anthropic clients and raw HTTP against a streamed store,
greedy output compared with mlx_lm.generate on the resident model."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time

import anthropic
import mlx_lm
import openai
import pytest

from mlxstore.moe.demo import DEMO_CONFIG
from mlxstore.pack import pack
from mlxstore.synth import make_model_dir

PROMPT = "w11 w42 w7 w99"
TOKENS = 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    src = make_model_dir("qwen3_moe", tmp_path_factory.mktemp("src") / "m", config_overrides=DEMO_CONFIG, seed=0)
    return src, pack(src, tmp_path_factory.mktemp("store") / "m", progress=False)


@pytest.fixture(scope="module")
def reference(model):
    resident, tokenizer = mlx_lm.load(str(model[0]))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    return mlx_lm.generate(resident, tokenizer, prompt, max_tokens=TOKENS)


@pytest.fixture(scope="module")
def server(model):
    """A streamed server (5 of 32 slots per layer), queue of 0: one request at a time."""
    cmd = [sys.executable, "-c", "from mlxstore.cli.main import main; main()", "serve", "--model", str(model[1]),
           "--memory-budget", "4.5MB", "--headroom", "1MiB", "--max-context", "128", "--port", "0",
           "--queue-size", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("mlxstore serve: http://127.0.0.1:"), proc.stderr.read()
    port = int(line.split("127.0.0.1:")[1].split("/")[0])
    yield proc, port
    proc.terminate()
    proc.wait(10)


def _post(port: int, path: str, body) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), json.loads(r.read() or b"{}")


def _chat(port: int) -> str:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}],
                                       max_tokens=TOKENS, temperature=0)  # fmt: skip
    return r.choices[0].message.content


def test_openai_chat_and_completions_match_mlx_lm(server, reference):
    _, port = server
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    assert _chat(port) == reference
    chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}],
                                            max_tokens=TOKENS, stream=True)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reference
    text = client.completions.create(model="m", prompt=PROMPT, max_tokens=3).choices[0].text
    assert len(text.split()) == 3
    models = client.models.list().data
    assert models[0].model_extra["mlxstore"]["mode"] == "sequential"


def test_anthropic_messages_match_mlx_lm(server, reference):
    _, port = server
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="none")
    msg = client.messages.create(model="m", max_tokens=TOKENS, messages=[{"role": "user", "content": PROMPT}])
    assert msg.content[0].text == reference and msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == TOKENS and msg.usage.input_tokens > 0
    with client.messages.stream(model="m", max_tokens=TOKENS, messages=[{"role": "user", "content": PROMPT}]) as s:
        assert "".join(s.text_stream) == reference
        assert s.get_final_message().stop_reason == "max_tokens"


def test_bad_requests_get_400_and_leave_the_model_as_fresh(server, reference):
    proc, port = server
    assert _post(port, "/v1/chat/completions", b"{not json")[0] == 400
    assert _post(port, "/v1/chat/completions", {"messages": "x"})[0] == 400
    assert _post(port, "/v1/chat/completions", {"messages": [], "max_tokens": "many"})[0] == 400
    status, _, body = _post(port, "/v1/messages", {"messages": [{"role": "robot", "content": 1}], "max_tokens": 1})
    assert status == 400 and body["type"] == "error"
    status, _, body = _post(port, "/v1/completions", {"prompt": " ".join(["w5"] * 200)})
    assert status == 400 and "200 tokens" in body["error"] and "max_context is 128" in body["error"]
    # a stream the client drops mid-way, while a second request finds the queue full
    for _ in range(100):  # the previous request's slot may not be released yet: retry on 503
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 100, "stream": True}))
        r = conn.getresponse()
        if r.status != 503:
            break
        r.read()
        conn.close()
        time.sleep(0.05)
    assert r.status == 200
    while not (line := r.readline()).startswith(b"data: "):  # keepalive comments come first
        assert line, "stream ended before any data"
    status, headers, _ = _post(port, "/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}]})
    assert status == 503 and int(headers["Retry-After"]) > 0
    r.close()
    conn.close()
    for _ in range(100):  # the slot comes back once the server sees the disconnect
        try:
            assert _chat(port) == reference  # same as a fresh server (= mlx_lm.generate)
            break
        except openai.APIStatusError as e:
            assert e.status_code == 503
            time.sleep(0.05)
    else:
        pytest.fail("slot was not freed after the client disconnected")
    assert proc.poll() is None
