"""A store is data: nothing in it runs as code when it is opened or loaded."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

import mlxstore
from bench.harness.hostile import base_of, with_index
from mlxstore.pack import pack
from mlxstore.synth import make_model_dir

_LOAD = """
import sys
import mlxstore
from mlxstore import moe
loader = mlxstore.load_model if sys.argv[2] == "load_model" else (lambda p: moe.load(p, slots_per_layer=2))
try:
    loader(sys.argv[1])
    print("LOADED")
except mlxstore.StoreError as e:
    print("REFUSED:", e)
"""


@pytest.fixture(scope="module")
def code_store(tmp_path_factory):
    """A store whose tokenizer config asks transformers to import a module the store embeds."""
    root = tmp_path_factory.mktemp("code")
    src = make_model_dir("llama", root / "src")
    marker = root / "RAN"
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer"] * 2}
    config["tokenizer_class"] = "EvilTokenizer"
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    (src / "tokenization_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    store = pack(src, root / "store", progress=False)
    assert "tokenization_evil.py" in mlxstore.open(store).files
    return store, marker


@pytest.mark.parametrize("loader", ["load_model", "moe.load"])
def test_tokenizer_code_in_a_store_never_runs(code_store, loader):
    """transformers offers to run `auto_map` code on a y/N prompt; answering y must not help."""
    store, marker = code_store
    r = subprocess.run([sys.executable, "-c", _LOAD, str(store), loader], input="y\ny\n",
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert not marker.exists(), "code embedded in the store ran"
    assert "REFUSED:" in r.stdout and "tokenizer" in r.stdout, r.stdout
    assert "Do you wish to run the custom code" not in r.stdout + r.stderr


def test_model_file_key_is_ignored(store_dir, tmp_path):
    """mlx-lm imports `config["model_file"]` from the model directory when trusted; mlxstore
    builds models from mlx-lm's own classes only, so the key changes nothing."""
    base = base_of(store_dir("llama"))
    idx = copy.deepcopy(base.index)
    idx["config"]["model_file"] = "../../../../tmp/evil.py"
    for name, data in with_index(base, idx).items():
        (tmp_path / name).write_bytes(data)
    model, _ = mlxstore.load_model(tmp_path)
    assert type(model).__module__ == "mlx_lm.models.llama"
