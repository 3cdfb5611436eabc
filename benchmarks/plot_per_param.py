"""Seconds, bytes and peak memory PER PARAMETER against parameters, from ``secfed bench`` JSON.

Flat lines mean the cost grows linearly with the update: no hidden quadratic term and no
memory blow-up at 40M or 100M parameters. Several JSON files (e.g. the 1e4..4e7 sweep and the
1e8 run of the masking protocols) are merged. Run from the repository root::

    python benchmarks/plot_per_param.py docs/bench/results.json docs/bench/results_100m.json \
        --out docs/bench/per_param.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PANELS = (
    ("encode_s", "client encode s / param"),
    ("aggregate_s", "server aggregate s / param"),
    ("bytes_up", "bytes up / param"),
    ("peak_rss_bytes_client", "client peak RSS bytes / param"),
    ("peak_rss_bytes_server", "server peak RSS bytes / param"),
)


def load(paths: list[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in paths:
        data = json.loads(p.read_text())
        rows += data["records"] if isinstance(data, dict) else data
    return [r for r in rows if not r.get("error") and r.get("kind", "secfed") == "secfed"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = load(args.json)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.6 * len(PANELS), 4.2))
    protocols = sorted({r["protocol"] for r in rows})
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        for name in protocols:
            pts = sorted(
                (r["params"], r[key] / r["params"])
                for r in rows
                if r["protocol"] == name and r.get(key) not in (None, 0)
            )
            if pts:
                ax.plot([p for p, _ in pts], [v for _, v in pts], "o-", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
