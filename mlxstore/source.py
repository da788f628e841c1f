"""What `pack` reads: a model directory mlx-lm can load, found and checked before any work.

Every problem with a source becomes a StoreError naming it, raised before anything is
written, so a bad SRC never leaves a partial store behind.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from mlxstore.formats import StoreError
from mlxstore.formats.layout import check_file_name

# Weight files are repacked, never embedded. Other checkpoint formats that may sit next
# to the safetensors are skipped too: mlx-lm does not read them and they can be huge.
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
)
_WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json")
_MAX_SAFETENSORS_HEADER = 100 << 20  # what the safetensors library accepts
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Source:
    path: Path
    label: str  # the directory's name or the repo id, recorded in the store's metadata
    config: dict


def _locate(src: str | os.PathLike) -> tuple[Path, str]:
    path = Path(src)
    if path.exists():
        if not path.is_dir():
            raise StoreError(f"{src}: not a model directory (it is a file)")
        return path, path.resolve().name
    text = str(src)
    if not _REPO_ID.match(text):
        raise StoreError(f"{src}: no such model directory")
    from mlxstore.mlxlm import hf_repo_to_path

    try:
        return hf_repo_to_path(text), text
    except Exception as e:  # huggingface_hub raises several kinds for "not cached"
        raise StoreError(
            f"{src}: no such directory, and not a model in the local Hugging Face cache "
            f"(pack works offline; download it first): {type(e).__name__}"
        ) from None


def _read_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.exists():
        raise StoreError(f"{path}: no config.json (not an HF-layout model directory)")
    try:
        from mlxstore.mlxlm import load_config

        config = load_config(path)
    except OSError as e:
        raise StoreError(f"{config_file}: cannot read: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{config_file}: not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise StoreError(f"{config_file}: not a JSON object")
    return config


def _check_architecture(config: dict, path: Path) -> None:
    from mlx_lm import __version__

    from mlxstore.mlxlm import get_classes

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise StoreError(f"{path / 'config.json'}: no model_type")
    try:
        get_classes(config)
    except ValueError:
        raise StoreError(
            f"{path}: unknown architecture {model_type!r} (mlx-lm {__version__} has no model for it)"
        ) from None


def _check_safetensors(path: Path) -> None:
    """Header sane and every tensor inside the file: names a damaged file before mlx-lm
    reports it without saying which file it was."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= _MAX_SAFETENSORS_HEADER:
                raise StoreError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
        size = path.stat().st_size
    except OSError as e:
        raise StoreError(f"{path}: cannot read: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError):
        raise StoreError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise StoreError(f"{path}: not a safetensors file (header is not an object)")
    try:
        end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0
        )
    except (TypeError, ValueError, KeyError, IndexError):
        raise StoreError(f"{path}: not a safetensors file (bad tensor entry in header)") from None
    if 8 + n + end > size:
        raise StoreError(f"{path}: truncated ({size} bytes, its header describes {8 + n + end})")


def _check_weights(path: Path) -> None:
    weights = sorted(path.glob("model*.safetensors"))  # exactly what mlx-lm loads
    if not weights:
        raise StoreError(f"{path}: no weights (no model*.safetensors files)")
    for w in weights:
        _check_safetensors(w)


def open_source(src: str | os.PathLike) -> Source:
    """Find SRC (directory or cached repo id) and check it is a model mlx-lm can load."""
    path, label = _locate(src)
    if not os.access(path, os.R_OK | os.X_OK):
        raise StoreError(f"{src}: directory is not readable")
    config = _read_config(path)
    _check_architecture(config, path)
    _check_weights(path)
    return Source(path, label, config)


def is_weight_file(name: str) -> bool:
    return name.endswith(_WEIGHT_SUFFIXES) or name.endswith(_WEIGHT_INDEXES)


# What a tokenizer is made of (transformers' file names); `tokenizer*` covers
# tokenizer.json, tokenizer_config.json, tokenizer.model.
TOKENIZER_NAMES = frozenset({"vocab.json", "vocab.txt", "merges.txt", "special_tokens_map.json",
                             "added_tokens.json", "spiece.model", "sentencepiece.bpe.model"})  # fmt: skip
LOOKED_FOR = "tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json"


def is_tokenizer_file(name: str) -> bool:
    return name.startswith("tokenizer") or name in TOKENIZER_NAMES or name.endswith(".tiktoken")


def has_tokenizer(names) -> bool:
    """Whether file `names` include a tokenizer's vocabulary or configuration."""
    return any(is_tokenizer_file(n) for n in names)


def companion_files(path: Path) -> list[Path]:
    """The source's non-weight files (tokenizer, templates, configs), sorted by name.

    Sub-directories are not part of a model's HF layout and are skipped, as are names the
    store format cannot hold (with a warning: mlx-lm would not need them either).
    """
    out = []
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if not entry.is_file() or is_weight_file(entry.name):
            continue
        try:
            check_file_name(entry.name, "file")
        except StoreError:
            warnings.warn(f"{entry}: name cannot be stored, skipped", stacklevel=2)
            continue
        out.append(entry)
    return out
