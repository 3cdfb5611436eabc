"""Results out: rich table, JSON, CSV, markdown and log-log plots."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

#: Columns every JSON record and CSV row carries, first (spread columns follow).
CORE_FIELDS = (
    "protocol",
    "kind",
    "params",
    "clients",
    "dropouts",
    "repeats",
    "encode_s",
    "aggregate_s",
    "decode_s",
    "round_s",
    "bytes_up",
    "bytes_down",
    "expansion",
    "max_abs_error",
    "error_bound",
    "peak_mem_bytes",
    "peak_rss_bytes_client",
    "peak_rss_bytes_server",
    "rss_over_update_client",
    "rss_over_update_server",
)


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _size(n: Any) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _label(r: dict[str, Any]) -> str:
    label = str(r["protocol"])
    if r.get("insecure"):
        label += " (INSECURE)"
    if r.get("authenticated") is False:
        label += " (UNAUTHENTICATED)"
    if r.get("kind") == "baseline":
        label += " [peer]"
    return label


def _row(r: dict[str, Any]) -> list[str]:
    head = [_label(r), f"{r['params']:,}", str(r["clients"]), str(r["dropouts"])]
    if r.get("error"):
        return [*head, *(["-"] * 9), str(r["error"])]
    return [
        *head,
        _num(r.get("encode_s"), ".3g"),
        _num(r.get("aggregate_s"), ".3g"),
        _num(r.get("decode_s"), ".3g"),
        _size(r.get("bytes_up")),
        _num(r.get("expansion"), ".2f"),
        _num(r.get("max_abs_error"), ".1e"),
        _num(r.get("error_bound"), ".1e"),
        _size(r.get("peak_rss_bytes_client")),
        _num(r.get("rss_over_update_client"), ".2f"),
        _size(r.get("peak_rss_bytes_server")),
    ]


def notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per distinct labelled note (peers' methods, insecure keys)."""
    seen: dict[str, None] = {}
    for r in records:
        if r.get("note"):
            seen.setdefault(f"{_label(r)}: {r['note']}", None)
        if r.get("insecure"):
            seen.setdefault(
                f"{_label(r)}: INSECURE test keys ({r.get('options')}), not for citing", None
            )
    return list(seen)


HEADERS = (
    "protocol",
    "params",
    "clients",
    "drop",
    "encode s",
    "aggregate s",
    "decode s",
    "up/client",
    "x float32",
    "max abs err",
    "bound",
    "client RSS",
    "client RSS-base / f32",
    "server RSS",
)


def rich_table(records: Sequence[dict[str, Any]], *, title: str = "secfed bench") -> Table:
    """Terminal table: medians, seconds and bytes per client."""
    table = Table(title=title, caption_justify="left")
    for h in HEADERS:
        table.add_column(h, justify="left" if h == "protocol" else "right")
    for r in records:
        table.add_row(*_row(r))
    table.caption = "\n".join(notes(records)) or None
    return table


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The same table as GitHub markdown, for the README."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in records:
        cells = [c.replace("|", "/") for c in _row(r)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {n}" for n in notes(records))]
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def write_json(
    path: Path, records: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None
) -> None:
    """A JSON list of records (NaN written as null); ``meta`` goes to ``<stem>.meta.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: _clean(v) for k, v in r.items()} for r in records]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    if meta is not None:
        path.with_suffix(".meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def read_json(path: Path) -> list[dict[str, Any]]:
    """Records of a file written by :func:`write_json`."""
    data = json.loads(path.read_text())
    records: list[dict[str, Any]] = data["records"] if isinstance(data, dict) else data
    return records


def write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """One row per record; core columns first, then the rest alphabetically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = sorted({k for r in records for k in r} - set(CORE_FIELDS))
    fields = [*CORE_FIELDS, *extra]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        for r in records:
            writer.writerow({k: "" if _clean(v) is None else v for k, v in r.items()})


def write_plot(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Client encode time, server time, upload bytes and per-party peak RSS vs parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: tuple[tuple[str, str], ...] = (
        ("encode_s", "client encode s (max over clients)"),
        ("aggregate_s", "server aggregate s"),
        ("bytes_up", "bytes up per client"),
        ("peak_rss_bytes_client", "client peak RSS bytes (own process)"),
        ("peak_rss_bytes_server", "server peak RSS bytes (own process)"),
    )
    panels = tuple(p for p in panels if any(_clean(r.get(p[0])) for r in records))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    axes = axes[0]
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in records:
        if r.get("error"):
            continue
        groups.setdefault((_label(r), r["clients"], r["dropouts"]), []).append(r)
    multi = len({(c, d) for _, c, d in groups}) > 1
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {g: cycle[i % len(cycle)] for i, g in enumerate(sorted(groups))}
    for ax, (key, title) in zip(axes, panels, strict=True):
        for (label, clients, drops), rows in sorted(groups.items()):
            pts = sorted(
                (r["params"], r[key]) for r in rows if _clean(r.get(key)) is not None and r[key] > 0
            )
            if not pts:
                continue
            style = "--" if "[peer]" in label else "-"
            name = f"{label} c={clients} d={drops}" if multi else label
            ax.plot(
                [p for p, _ in pts],
                [v for _, v in pts],
                style,
                marker="o",
                label=name,
                color=colors[(label, clients, drops)],
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
