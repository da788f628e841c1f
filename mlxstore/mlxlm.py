"""The one place mlxstore reaches into mlx-lm beyond its documented API.

mlx-lm's public API is `mlx_lm.load`, `generate`, `stream_generate` and `__version__`;
everything else mlxstore needs (the model classes, the switch layers, prompt caches,
samplers, the server's handler) is an internal that can move between releases. Every
such import goes through this module, so an mlx-lm upgrade breaks here, in one file, and
pyproject.toml pins the mlx-lm range the tests ran with.
"""

from __future__ import annotations

from mlx_lm import server
from mlx_lm.models.cache import (
    ArraysCache,
    BatchKVCache,
    CacheList,
    KVCache,
    LRUPromptCache,
    QuantizedKVCache,
    RotatingKVCache,
    make_prompt_cache,
)
from mlx_lm.models.cache import _BaseCache as BaseCache
from mlx_lm.models.switch_layers import SwitchGLU, SwitchMLP
from mlx_lm.sample_utils import make_sampler
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import _decode_tagged_floats as decode_tagged_floats
from mlx_lm.utils import _get_classes as get_classes
from mlx_lm.utils import (
    hf_repo_to_path,
    load_config,
    load_model,
    load_tokenizer,
    quantize_model,
    save_config,
)

SWITCH_TYPES = (SwitchGLU, SwitchMLP)  # the modules every mlx-lm MoE keeps its expert stacks in

__all__ = [
    "ArraysCache",
    "BaseCache",
    "BatchKVCache",
    "CacheList",
    "KVCache",
    "LRUPromptCache",
    "QuantizedKVCache",
    "RotatingKVCache",
    "SWITCH_TYPES",
    "SwitchGLU",
    "SwitchMLP",
    "TokenizerWrapper",
    "decode_tagged_floats",
    "get_classes",
    "hf_repo_to_path",
    "load_config",
    "load_model",
    "load_tokenizer",
    "make_prompt_cache",
    "make_sampler",
    "quantize_model",
    "save_config",
    "server",
]
