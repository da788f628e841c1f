"""The human side of a results dict: the targets table, the sweep tables and the PNG."""

from __future__ import annotations

from pathlib import Path

from bench.harness.targets import TARGETS


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return "-" if v is None else str(v)


def targets_table(results: dict) -> str:
    lines = [f"{'id':<3} {'value':>12} {'target':>8} {'met':>5}  metric"]
    for tid, t in TARGETS.items():
        r = results.get(tid) or {}
        met = {True: "yes", False: "NO", None: "-"}[r.get("met")]
        note = f" [{r['note']}]" if r.get("note") else ""
        lines.append(f"{tid:<3} {_fmt(r.get('value')):>12} {r.get('target', ''):>8} {met:>5}  {t.metric}{note}")
    return "\n".join(lines)


def sweep_table(rows: dict, title: str) -> str:
    cols = ("tok_per_s", "hit_rate", "s_per_token", "router_sync", "expert_reads", "rest",
            "missed_mb_per_token", "disk_gb_per_token", "prefetch_issued", "prefetch_used")
    head = f"{title:<22}" + "".join(f"{c[:11]:>12}" for c in cols)
    out = [head]
    for name, row in rows.items():
        if row.get("died"):
            out.append(f"{name:<22} died: {row['died'].get('op')} oom={row['died'].get('oom_killed')}")
            continue
        out.append(f"{name:<22}" + "".join(f"{_fmt(row.get(c)):>12}" for c in cols))
    return "\n".join(out)


def full_report(results: dict) -> str:
    d = results.get("details", {})
    parts = [targets_table(results)]
    p1m, p4m = d.get("P1", {}).get("paired_median_ratio"), d.get("P4", {}).get("paired_median_vs_resident")
    if p1m or p4m:
        parts.append(f"robustness (median over interleaved token pairs of resident/streamed time): "
                     f"P1 {_fmt(p1m)}, P4 vs resident {_fmt(p4m)} (bound: "
                     f"{d.get('P4', {}).get('bound_is', '-')})")
    table = d.get("prefetch_table")
    if table:
        parts.append(sweep_table(table["rows"], "prefetch-pagecache"))
        parts.append(f"best by tok/s: {table['best_by_tok_s']} (cap {table['cap_bytes'] / 2**30:.2f} GiB)")
    curve = d.get("budget_curve")
    if curve:
        parts.append(sweep_table({f"slots={p['slots_per_layer']}": p for p in curve["points"]}, "budget"))
    prof = {**d.get("P1", {}).get("profile", {}), **d.get("P4", {}).get("profile", {})}
    if d.get("P2", {}).get("profile"):
        prof["p2-miss-heavy"] = d["P2"]["profile"]
    if prof:
        parts.append(sweep_table(prof, "per-token profile"))
        parts.append("profile columns, seconds per token: router_sync = waiting at the per-layer "
                     "host sync on router ids (the compute of everything before it), expert_reads "
                     "= waiting for miss reads (moe.stats wait_seconds), rest = graph building, "
                     "head and the last layer's compute")
    return "\n\n".join(parts)


def plot(results: dict, path: Path) -> Path | None:
    """decode tok/s and hit rate vs budget (the budget curve), resident tok/s as a line."""
    points = (results.get("details", {}).get("budget_curve") or {}).get("points") or []
    points = [p for p in points if p.get("budget_bytes") and p.get("tok_per_s")]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [p["budget_bytes"] / 2**30 for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(x, [p["tok_per_s"] for p in points], "o-", color="tab:blue", label="streamed decode tok/s")
    resident = results["details"]["budget_curve"].get("resident_tok_s")
    if resident:
        ax.axhline(resident, color="tab:blue", ls="--", lw=1, label="resident mlx-lm tok/s")
    ax.set_xlabel("memory budget (GiB: dense + expert banks + KV + headroom)")
    ax.set_ylabel("decode tok/s")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(x, [p["hit_rate"] for p in points], "s-", color="tab:orange", label="hit rate")
    ax2.set_ylabel("expert hit rate")
    ax2.set_ylim(0, 1)
    for p, xi in zip(points, x):
        ax2.annotate(str(p["slots_per_layer"]), (xi, p["hit_rate"]), fontsize=7,
                     textcoords="offset points", xytext=(3, -10))  # fmt: skip
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    scale = results.get("scale", {}).get("name", "")
    ax.set_title(f"mlxstore streamed decode vs budget ({scale}; trace replay, cold, page cache dropped)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
