"""Probe: ways to put missed experts into device-memory slots on CUDA, side by side (warm)."""

import ctypes
import glob
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numpy as np

from mlxstore import osio, staged

E = 162 * 16384  # one expert's extent (~2.65 MB)
NEXP = 128
PATH = "/tmp/probe.bin"
STAGE = 48 << 20
THREADS = 4
PART = 256 << 10


class MemLoc(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


def cudart():
    for line in open("/proc/self/maps"):
        if "libcudart" in line:
            return ctypes.CDLL(line.split()[-1]), line.split()[-1]
    for pat in [p + "/nvidia/cu13/lib/libcudart.so*" for p in sys.path] + [p + "/nvidia/cuda_runtime/lib/libcudart.so*" for p in sys.path]:
        for f in glob.glob(pat):
            return ctypes.CDLL(f), f
    return None, None


def advise(rt, ptr, size, advice, loc_type, loc_id):
    ver = ctypes.c_int()
    rt.cudaRuntimeGetVersion(ctypes.byref(ver))
    if ver.value >= 13000:
        f = rt.cudaMemAdvise
        f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, MemLoc]
        return f(ptr, size, advice, MemLoc(loc_type, loc_id))
    f = rt.cudaMemAdvise_v2
    f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, MemLoc]
    return f(ptr, size, advice, MemLoc(loc_type, loc_id))


def addr(view):
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/probe.json"
    mx.eval(mx.zeros(1))
    rt, rtpath = cudart()
    print("device", mx.default_device(), "cudart", rtpath, flush=True)
    if not os.path.exists(PATH) or os.path.getsize(PATH) != E * NEXP:
        rng = np.random.default_rng(0)
        with open(PATH, "wb") as f:
            for _ in range(NEXP):
                f.write(rng.integers(0, 256, E, dtype=np.uint8).tobytes())
    fd = os.open(PATH, os.O_RDONLY)
    with open(PATH, "rb") as f:
        while f.read(64 << 20):
            pass
    pool = ThreadPoolExecutor(16)
    bank = mx.zeros((64, E), dtype=mx.uint8)
    mx.eval(bank)

    stages = {}
    for name in ("managed", "advised", "advised-rm"):
        s = mx.zeros((STAGE,), dtype=mx.uint8)
        mx.eval(s)
        v = memoryview(s).cast("B")
        v[:] = b"\x01" * STAGE  # first touch
        if name != "managed" and rt is not None:
            p = addr(v)
            if name == "advised":
                r1 = advise(rt, p, STAGE, 3, 2, 0)  # SetPreferredLocation host
                r2 = advise(rt, p, STAGE, 5, 1, 0)  # SetAccessedBy device 0
            else:
                r1 = advise(rt, p, STAGE, 1, 1, 0)  # SetReadMostly
                r2 = 0
            print(name, "advise rc", r1, r2, flush=True)
        stages[name] = (s, v)
    host = bytearray(STAGE)

    def read_into(view, experts):
        futs = []
        for i, e in enumerate(experts):
            for off, views in osio.split_reads(e * E, [view[i * E:(i + 1) * E]], THREADS, PART):
                futs.append(pool.submit(osio.read_extent_into, fd, off, views, "probe"))
        for f in futs:
            f.result()

    def m_load(experts, slots):
        nonlocal bank
        t0 = time.perf_counter()
        loads, fs = staged.read_to_device([(fd, e * E, E, "probe") for e in experts], pool, THREADS, PART, 8 << 20)
        t1 = time.perf_counter()
        it = iter(slots)
        for raw, n in loads:
            for i in range(n):
                bank[next(it)] = raw[i * E:(i + 1) * E]
        mx.eval(bank)
        return t1 - t0, time.perf_counter() - t1

    def m_stage(name):
        s, v = stages[name]

        def run(experts, slots):
            nonlocal bank
            t0 = time.perf_counter()
            read_into(v, experts)
            t1 = time.perf_counter()
            for i, sl in enumerate(slots):
                bank[sl] = s[i * E:(i + 1) * E]
            mx.eval(bank)
            return t1 - t0, time.perf_counter() - t1
        return run

    def m_host(experts, slots):
        t0 = time.perf_counter()
        read_into(memoryview(host), experts)
        return time.perf_counter() - t0, 0.0

    def m_copyonly(name):
        s, v = stages[name]

        def run(experts, slots):
            nonlocal bank
            t1 = time.perf_counter()
            for i, sl in enumerate(slots):
                bank[sl] = s[i * E:(i + 1) * E]
            mx.eval(bank)
            return 0.0, time.perf_counter() - t1
        return run

    methods = {"host-read": m_host, "load": m_load, "managed": m_stage("managed"), "advised": m_stage("advised"),
               "advised-rm": m_stage("advised-rm"), "copy-advised": m_copyonly("advised"),
               "copy-managed": m_copyonly("managed")}
    rng = np.random.default_rng(1)
    res = {}
    # correctness
    for name in ("load", "managed", "advised", "advised-rm"):
        ex = [int(x) for x in rng.choice(NEXP, 3, replace=False)]
        sl = [int(x) for x in rng.choice(64, 3, replace=False)]
        methods[name](ex, sl)
        ok = True
        for e, s_ in zip(ex, sl):
            want = mx.array(np.frombuffer(os.pread(fd, E, e * E), dtype=np.uint8))
            ok = ok and bool(mx.array_equal(bank[s_], want).item())
        res[f"{name}-exact"] = ok
        print(name, "exact", ok, flush=True)
    for n in (1, 2, 4, 16):
        for rnd in range(3):
            for name, m in methods.items():
                for _ in range(10):
                    ex = [int(x) for x in rng.choice(NEXP, n, replace=False)]
                    sl = [int(x) for x in rng.choice(64, n, replace=False)]
                    a, b = m(ex, sl)
                    res.setdefault(f"{name}/{n}", []).append((a, b))
        for name in methods:
            xs = res[f"{name}/{n}"]
            a = statistics.median(x[0] for x in xs)
            b = statistics.median(x[1] for x in xs)
            tot = statistics.median(x[0] + x[1] for x in xs)
            gbs = n * E / tot / 1e9 if tot else 0
            print(f"n={n:2d} {name:13s} read {a*1e3:7.3f} ms  gpu {b*1e3:7.3f} ms  total {tot*1e3:7.3f} ms  {gbs:6.2f} GB/s", flush=True)
    json.dump(res, open(out, "w"))


if __name__ == "__main__":
    main()
