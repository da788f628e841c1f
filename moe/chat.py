"""`mlxstore chat`: mlx_lm.chat's loop over a store, one prompt cache kept across turns.

Each turn feeds only the new message's tokens (the template of that one message), as
mlx_lm.chat does, so the KV cache of earlier turns is reused instead of recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mlxstore.mlxlm import make_prompt_cache

from .generate import Summary, generate_text

HELP = "q: quit, r: reset the conversation, h: this help"


def chat_loop(model, tokenizer, lines: Iterable[str], say: Callable[[str], None], stats: Callable[[str], None], *,
              system_prompt: str | None = None, max_kv_size: int | None = None, **generate_kw) -> int:  # fmt: skip
    """Run turns for `lines` (stdin or a list); returns the number of turns answered."""
    cache = make_prompt_cache(model, max_kv_size)
    turns = 0
    for line in lines:
        query = line.rstrip("\n")
        if query == "q":
            break
        if query == "r":
            cache = make_prompt_cache(model, max_kv_size)
            say("[conversation reset]\n")
            continue
        if query == "h":
            say(HELP + "\n")
        if query in ("h", ""):
            continue
        messages = [{"role": "system", "content": system_prompt}] if system_prompt and turns == 0 else []
        messages.append({"role": "user", "content": query})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        summary = Summary()
        for text in generate_text(model, tokenizer, prompt, summary=summary, prompt_cache=cache, **generate_kw):
            say(text)
        say("\n")
        stats(summary.line())
        turns += 1
    return turns
