"""`python -m bench prefix`: time to first token of turns 1..8 of a scripted chat against
`mlxstore serve`, with and without the prefix cache, side by side in one run.

Why: an agent loop resends the whole conversation every turn; mlx-lm's prompt cache lets
the server compute only the new turn. Each side gets its own fresh server over the same
streamed store (experts under a budget), and talks to it with the `openai` client as a
chat app would; greedy answers are appended to the history, so both sides see the same
prompts (checked).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import click

from bench.harness.results import new_result

TURNS = 8


def _side(store: Path, budget: str, cache: bool, system: str, turns: list[str], max_tokens: int) -> list[dict]:
    import openai

    from mlxstore.moe.load import kv_cache_bytes, load
    from mlxstore.moe.plan import DEFAULT_MAX_CONTEXT
    from mlxstore.moe.server import ServeOptions, make_server
    from mlxstore.store import open as open_store

    max_context = DEFAULT_MAX_CONTEXT
    with open_store(store) as s:
        reserve = kv_cache_bytes(s, max_context) if cache else 0
    model, tokenizer = load(store, budget, max_context=max_context, headroom="16MiB", reserve=reserve)
    httpd, state = make_server(model, tokenizer, "bench", ServeOptions(port=0, max_context=max_context,
                                                                       prompt_cache_bytes=reserve))  # fmt: skip
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1", api_key="none")
    messages, rows = [{"role": "system", "content": system}], []
    try:
        for i, user in enumerate(turns, 1):
            messages.append({"role": "user", "content": user})
            start = time.perf_counter()
            first, text, usage = None, "", None
            for chunk in client.chat.completions.create(model="bench", messages=messages, max_tokens=max_tokens,
                                                        stream=True, stream_options={"include_usage": True}):  # fmt: skip
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    text += chunk.choices[0].delta.content
                if chunk.usage:
                    usage = chunk.usage
            end = time.perf_counter()
            messages.append({"role": "assistant", "content": text})
            cached = (usage.prompt_tokens_details.cached_tokens or 0) if usage.prompt_tokens_details else 0
            rows.append({"turn": i, "prompt_tokens": usage.prompt_tokens, "cached_tokens": cached,
                         "ttft_s": first - start, "decode_tok_s": (usage.completion_tokens - 1) / max(end - first, 1e-9),
                         "text": text})  # fmt: skip
    finally:
        httpd.shutdown()
        httpd.server_close()
        state.generator.stop_and_join()
    return rows


@click.command("prefix")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--max-tokens", default=16, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="JSON results (default: a new bench/results/prefix-<UTC time>.json; never the committed prefix.json).")  # fmt: skip
def command(workdir: Path | None, max_tokens: int, json_out: str) -> None:
    """TTFT of turns 1..8 with and without the prefix cache (streamed synthetic qwen3_moe)."""
    from mlxstore.moe.demo import DEMO_CONFIG as config
    from mlxstore.pack import pack
    from mlxstore.synth import make_model_dir
    with tempfile.TemporaryDirectory(prefix="mlxstore-prefix-") as tmp:
        root = Path(workdir or tmp)
        store = root / "store"
        if not store.exists():
            pack(make_model_dir("qwen3_moe", root / "src", config_overrides=config, seed=0), store, progress=False)
        budget = "24MB"  # dense + KV + headroom + about half of the experts
        words = [f"w{100 + (i * 37) % 900}" for i in range(2000)]
        system = " ".join(words[:300])
        turns = [" ".join(words[300 + 30 * t: 330 + 30 * t]) for t in range(TURNS)]
        off = _side(store, budget, False, system, turns, max_tokens)
        on = _side(store, budget, True, system, turns, max_tokens)
    same = [a["text"] == b["text"] for a, b in zip(off, on)]
    click.echo("| turn | prompt tokens | cached | TTFT no cache (s) | TTFT prefix cache (s) | ratio | decode tok/s off / on |")
    click.echo("|---|---|---|---|---|---|---|")
    for a, b in zip(off, on):
        click.echo(f"| {a['turn']} | {a['prompt_tokens']} | {b['cached_tokens']} | {a['ttft_s']:.3f} | {b['ttft_s']:.3f} "
                   f"| {a['ttft_s'] / b['ttft_s']:.2f} | {a['decode_tok_s']:.1f} / {b['decode_tok_s']:.1f} |")
    click.echo(f"answers identical with and without the cache: {sum(same)}/{len(same)} turns")
    json_out = json_out or str(new_result("prefix"))
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps({"budget": budget, "config": config, "max_tokens": max_tokens,
                                          "no_cache": off, "prefix_cache": on, "identical": same}, indent=2) + "\n")  # fmt: skip
