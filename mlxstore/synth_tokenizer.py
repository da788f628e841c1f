"""A tiny offline tokenizer that `mlx_lm.load` accepts, for synthetic test models.

Why: `mlx_lm.load` needs tokenizer files beside the weights and nothing may be
downloaded here. A WordLevel vocabulary of exactly ``vocab_size`` tokens means every id
a random model emits decodes to something ("w<id>").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Fixed ids 0..4, so configs and tests can name them without reading the tokenizer.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = range(len(SPECIAL_TOKENS))
# Plain words at ids 5..7 so chat prompts encode without <unk>.
ROLE_WORDS = ("system", "user", "assistant")
FIRST_WORD_ID = len(SPECIAL_TOKENS) + len(ROLE_WORDS)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }} {{ message['content'] }} <|im_end|> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def word(token_id: int) -> str:
    """The text of a non-special token id: a role word, else ``w<id>``."""
    if len(SPECIAL_TOKENS) <= token_id < FIRST_WORD_ID:
        return ROLE_WORDS[token_id - len(SPECIAL_TOKENS)]
    return f"w{token_id}"


def write_tokenizer(out_dir: str | os.PathLike[str], vocab_size: int,
                    model_max_length: int = 32768) -> dict[str, int]:
    """Write tokenizer.json + tokenizer_config.json for ``vocab_size`` tokens.

    Ids 0..4 are SPECIAL_TOKENS, 5..7 the chat roles, every other id i the word
    ``w<i>``; text is split on whitespace. Returns the special ids to put in config.json
    (``bos_token_id``, ``eos_token_id``, ...).
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    if vocab_size <= FIRST_WORD_ID:
        raise ValueError(f"vocab_size must exceed {FIRST_WORD_ID} (special tokens and roles)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({word(i): i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[UNK_ID]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": SPECIAL_TOKENS[UNK_ID],
        "bos_token": SPECIAL_TOKENS[BOS_ID],
        "eos_token": SPECIAL_TOKENS[EOS_ID],
        "pad_token": SPECIAL_TOKENS[EOS_ID],
        "add_bos_token": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {
        "unk_token_id": UNK_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
    }
