# Run on the lent H200 (mlx 0.32.4 CUDA) from the checkout root with PYTHONPATH=.:tests, with prompt chunks evaluated layer by layer; output in probe-retain-h200.txt.
"""Device probe: test_memory_budget[deepseek_v3] at 1020 tokens: peak of the prefill vs the decode steps."""
import sys, tempfile
sys.path.insert(0, "tests")
from pathlib import Path
import mlx.core as mx, mlx_lm
import test_memory_budget as t
from mlxstore import moe
from mlxstore.synth import make_model_dir
from mlxstore.pack import pack
from mlxstore.mlxlm import make_prompt_cache
root = Path(tempfile.mkdtemp())
arch = "deepseek_v3"
src = make_model_dir(arch, root / "src", mode="affine", dtype="float32", config_overrides=t.SHAPES[arch], seed=4)
store = pack(src, root / "s.store", progress=False)
budget = t._budget(store)
for kw in ({}, {"optimistic": False}):
    model, tok = moe.load(store, budget, max_context=t.MAX_CONTEXT, headroom=t.HEADROOM, **kw)
    step = moe.plan_of(model).prefill_step_size
    for n in (1000, 1020):
        p = mx.array([t._prompt(n)])
        cache = make_prompt_cache(model)
        mx.clear_cache(); mx.reset_peak_memory()
        for i in range(0, n - 1, step):
            model(p[:, i:min(i + step, n - 1)], cache=cache); mx.eval([c.state for c in cache])
        pre = mx.get_peak_memory()
        y = p[:, -1:]
        peaks = []
        for _ in range(4):
            mx.reset_peak_memory()
            logits = model(y, cache=cache); y = mx.argmax(logits[:, -1:], axis=-1); mx.eval(y)
            peaks.append(mx.get_peak_memory())
        print(f"{kw} n={n} budget {budget}: prefill peak {pre} ({pre-budget:+d}); decode peaks {[q-budget for q in peaks]}", flush=True)
    del model; mx.clear_cache()
