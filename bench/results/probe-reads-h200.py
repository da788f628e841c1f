"""Probe: where a warm miss read's time goes during decode on CUDA (25% of experts, staged fill).

Run on the H200 at 85b1715 (`PYTHONPATH=. python3 probe-reads-h200.py OUTDIR`), where the part
size was the module constant `moe.bank.READ_PART`; it is `moe.load(read_size=)` since, as here.
Output: probe-reads-h200.json beside it (t = io_threads, p = part size; idle_* = the same two
experts read with the GPU idle).
"""
import json, os, sys, threading, time
from pathlib import Path
import mlx.core as mx
import numpy as np
from bench.commands.gpu import _decode, _warm, _files, make_config, write_model
from bench.harness.worker import _banks
from mlxstore import moe, osio
from mlxstore.moe import bank as bankmod, replay
from mlxstore.formats.route_trace import load_route_trace
from bench.harness.policy_sim import default_trace
from mlxstore.pack import pack

out = Path(sys.argv[1]); work = Path("/tmp/probe-reads")
L, H = int(os.environ.get("PL", 16)), int(os.environ.get("PH", 2048))
cfg = make_config(layers=L, experts=128, hidden=H, moe_intermediate=3 * H // 8, vocab=4096, intermediate=3 * H, heads=H // 64)
if not (work / "model" / "config.json").exists():
    write_model(work / "model", cfg)
store = work / "model.store"
if not store.exists():
    pack(work / "model", store, progress=False)
route = load_route_trace(default_trace())
files = _files(store)
log = []  # (thread, t0, t1, nbytes)
real = osio.read_extent_into
def spy(fd, off, bufs, what="x"):
    t0 = time.perf_counter(); n = real(fd, off, bufs, what); log.append((threading.get_ident(), t0, time.perf_counter(), n)); return n
osio.read_extent_into = spy
stages = []
real_stage = bankmod.ExpertBank._stage
def stage(self, misses):
    t0 = time.perf_counter(); i0 = len(log); real_stage(self, misses); stages.append((t0, time.perf_counter(), i0, len(log), len(misses)))
bankmod.ExpertBank._stage = stage
res = {}
short = np.random.default_rng(0).integers(3, 4096, size=32).astype(np.int32)
for threads in [int(x) for x in os.environ.get("PT", "16,4").split(",")]:
  for part in (256 << 10, 1 << 20):
    m, _ = moe.load(store, slots_per_layer=32, page_cache="keep", io_threads=threads, read_size=part, fill="staged")
    replay.replay(m, route)
    _warm(files)
    _decode(m, short, 4, 0)
    log.clear(); stages.clear()
    NT = int(os.environ.get("PN", 16))
    secs, st = _decode(m, short, NT, 64)
    walls = [b - a for a, b, *_ in stages]
    reads = [(t1 - t0, n) for _, t0, t1, n in log]
    span = []
    for a, b, i0, i1, k in stages:
        if i1 > i0:
            rs = log[i0:i1]
            span.append((min(r[1] for r in rs) - a, max(r[2] for r in rs) - min(r[1] for r in rs), b - max(r[2] for r in rs), sum(r[3] for r in rs), k, len(rs)))
    sp = np.array(span)
    key = f"t{threads}-p{part >> 10}k"
    res[key] = dict(tok_s=NT / secs, stages=len(stages), stage_ms_mean=1e3 * np.mean(walls), file_ms_tok=st["file_seconds"] / NT * 1e3,
                    read_s_tok=st["read_seconds"] / NT * 1e3, bytes_tok=st["bytes_read"] / NT,
                    preadv_n=len(reads), preadv_ms_mean=1e3 * np.mean([r[0] for r in reads]), preadv_mb_mean=np.mean([r[1] for r in reads]) / 1e6,
                    preadv_gbs_each=np.sum([r[1] for r in reads]) / np.sum([r[0] for r in reads]) / 1e9,
                    start_lag_ms=1e3 * sp[:, 0].mean(), read_span_ms=1e3 * sp[:, 1].mean(), tail_ms=1e3 * sp[:, 2].mean(),
                    span_gbs=sp[:, 3].sum() / sp[:, 1].sum() / 1e9, misses_per_stage=sp[:, 4].mean(), reads_per_stage=sp[:, 5].mean())
    print(key, json.dumps(res[key], default=float), flush=True)
    # the same misses, reads only, GPU idle: into the staging buffers, then into a plain bytearray
    b = _banks(m)[0]
    ext = [b.group.extents[e] for e in range(6)]
    for name in ("staging", "bytearray"):
        times = []
        for r in range(30):
            buf = b.staging.take() if name == "staging" else None
            view = buf.view if buf is not None else memoryview(bytearray(8 << 20))
            t0 = time.perf_counter()
            futs, base = [], 0
            for x in ext[(r % 3) * 2:(r % 3) * 2 + 2]:
                for off, vs in osio.split_reads(x.offset, [view[base:base + x.length]], threads, part):
                    futs.append(b.pool.submit(real, b.fds[x.shard], off, vs, "p"))
                base += x.length
            for f in futs: f.result()
            times.append(time.perf_counter() - t0)
        res[key][f"idle_{name}_ms_2exp"] = 1e3 * float(np.median(times))
    print(key, "idle", res[key]["idle_staging_ms_2exp"], res[key]["idle_bytearray_ms_2exp"], flush=True)
    del m
(out / "probe-reads.json").write_text(json.dumps(res, default=float, indent=1))
