# Run on the lent H200 (mlx 0.32.4 CUDA) from the checkout root with PYTHONPATH=.:tests; output in probe-retain-h200.txt.
"""Resident deepseek_v3 (test_memory_budget shape) at 1000 tokens on CUDA: peak over weights,
plain vs an eval after every decoder layer (if the excess is intermediates kept until a commit)."""
import sys, tempfile
sys.path.insert(0, "tests")
from pathlib import Path
import mlx.core as mx, mlx_lm
import test_memory_budget as t
from mlxstore.synth import make_model_dir
root = Path(tempfile.mkdtemp())
src = make_model_dir("deepseek_v3", root / "src", mode="affine", dtype="float32", config_overrides=t.SHAPES["deepseek_v3"], seed=4)
res, tok = mlx_lm.load(str(src)); mx.eval(res.parameters()); mx.clear_cache()
w = mx.get_active_memory()
for per_layer in (False, True, False):
    if per_layer:
        for layer in res.model.layers:
            cls = type(layer)
            if not getattr(cls, "_patched", False):
                real = cls.__call__
                cls.__call__ = lambda self, *a, _r=real, **k: (lambda y: (mx.eval(y), y)[1])(_r(self, *a, **k)) if cls._on else _r(self, *a, **k)
                cls._patched = True
            cls._on = True
    elif getattr(type(res.model.layers[0]), "_patched", False):
        type(res.model.layers[0])._on = False
    mx.clear_cache(); mx.reset_peak_memory()
    t._tokens(res, tok, t._prompt(1000), 128)
    print(f"per-layer eval {per_layer}: peak over weights {mx.get_peak_memory() - w}", flush=True)
