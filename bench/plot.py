"""The curves of a bench run as one PNG beside its JSON (matplotlib, the `dev` extra).

.venv/bin/python -m bench.plot bench/results/latest.json   # writes bench/results/latest.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Draw the dispatch, depth and workers curves that ``results`` holds; None when it holds none."""
    panels = [k for k in ("dispatch", "depth", "workers") if k in results]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        {"dispatch": _dispatch, "depth": _depth, "workers": _workers}[key](ax, results[key])
        ax.grid(True, alpha=0.3)
    m = results.get("machine", {})
    load = m.get("load_average") or [0.0]
    fig.suptitle(
        f"MiniModal bench ({results.get('size')}), commit {str(m.get('commit', '?'))[:12]}: "
        f"{m.get('cpus')} cores, {m.get('memory_gib')} GiB, Linux {m.get('kernel')}, Python {m.get('python')}; "
        f"shared machine, load {load[0]:.1f} at start",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _dispatch(ax: Any, d: dict[str, Any]) -> None:
    for freed in sorted({p["freed_per_pass"] for p in d["points"]}):
        points = [p for p in d["points"] if p["freed_per_pass"] == freed]
        users = [p["users"] for p in points]
        ax.plot(users, [p["per_call_us"] for p in points], "o-", label=f"wall, {freed} slot(s) freed a pass")
        ax.plot(users, [p["cpu_per_call_us"] for p in points], "x--", label=f"dispatcher CPU, {freed} freed")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("users waiting")
    ax.set_ylabel("µs per dispatched call")
    ax.set_title(f"dispatch cost ({d['slots']} slots busy)")
    ax.legend(fontsize=7)


def _depth(ax: Any, d: dict[str, Any]) -> None:
    queued = [p["queued"] for p in d["points"]]
    ax.plot(queued, [p["submit_per_second"] for p in d["points"]], "o-", label="submit, tail probe (HTTP, 100/request)")
    ax.plot(queued, [p["submit_filler_per_second"] for p in d["points"]], "^:", label="submit, the whole filler")
    ax.plot(queued, [p["drain"]["per_second"] or 0 for p in d["points"]], "s-", label="drain (inputs ended)")
    for p in d["points"]:
        if p["filler_path"] == "direct":
            ax.annotate("filler via Lua", (p["queued"], p["submit_per_second"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("inputs queued")
    ax.set_ylabel("inputs/s")
    ax.set_ylim(bottom=0)
    ax.set_title("submit and drain rate against queue depth")
    ax.legend(fontsize=7)


def _workers(ax: Any, d: dict[str, Any]) -> None:
    workers = [p["workers"] for p in d["points"]]
    ax.plot(workers, [p["per_second"] or 0 for p in d["points"]], "o-", label="drain, measured")
    ax.plot(workers, [p["ceiling_per_second"] for p in d["points"]], "k:", label="slots / call time")
    for p in d["points"]:
        share, busy = p["dispatcher_cpu_share"] or 0, p.get("machine_cpu_busy", 0)
        text = f"dispatcher CPU {share:.0%}, machine {busy:.0%}"
        ax.annotate(text, (p["workers"], p["per_second"] or 0), fontsize=7)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("calls/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"workers ({d['slots_per_worker']} slots each, {d['call_seconds'] * 1000:g} ms calls)")
    ax.legend(fontsize=7)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    print(plot(json.loads(source.read_text()), source.with_suffix(".png")))
