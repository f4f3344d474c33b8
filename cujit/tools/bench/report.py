"""The report of the serving-op sweep: a Markdown table per op family, a JSON of every row, PNG plots.

The report opens with the summary per op of ``summary.py`` (cujit against each contender, fraction of peak).

Works on plain row dicts (as ``ops.run_case`` returns them), so that it is tested without a GPU. A row::

    {"family", "op", "variant", "label", "dtype", "tokens", "shape": {...}, "group", "bytes", "formula",
     "timing": "graph" | "flush", "calls_per_graph", "copy_us", "copy_gbps", "noise",
     "contenders": {name: {"status", "note", "us", "low_us", "high_us", "gbps", "x_copy", "bytes", ...}}}

A contender's cell is timed when its status is "ok" and it has "us"; otherwise the status says why not.
Plots need matplotlib (``pip install 'cujit[bench]'``); without it they are skipped with a message.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cases import FAMILIES, GRAPH_MAX_TOKENS, SHORT
from .summary import DISPLAY, PEERS, geomean, speedup, summary_lines, untimed_reason

__all__ = [
    "DISPLAY",
    "geomean",
    "markdown",
    "peers_text",
    "plot_name",
    "progress_line",
    "rewrite_report",
    "speedup",
    "summary",
    "write_plots",
    "write_report",
]

def _title(family: str) -> str:
    """The heading of a family's table: the title its module in ``ops/`` declares."""
    from .ops.registry import families

    return next((f.title for f in families() if f.name == family), family)


def peers_text(meta: Mapping[str, Any]) -> str:
    """The other libraries of a sweep, for its header: each one's version, or why its column says n/a.

    ``liger-kernel 0.8.5, quack-kernels 0.6.5, flashinfer-python not installed``; a package that is installed
    but cannot be used here gives the reason: ``flashinfer-python 0.7.4 (n/a: importing flashinfer.norm failed:
    ...)``.
    """
    parts = []
    for key, dist in PEERS.items():
        version, problem = meta.get(key), meta.get(f"{key}_problem")
        if not version:
            parts.append(f"{dist} not installed" if not problem or "not installed" in problem
                         else f"{dist} n/a ({problem})")
        else:
            parts.append(f"{dist} {version}" + (f" (n/a: {problem})" if problem else ""))
    return ", ".join(parts)


def summary(rows: Sequence[Mapping[str, Any]], who: str = "cujit", against: str = "compile") -> dict[str, Any]:
    """Geometric mean and slowest row of ``who`` against ``against`` over the rows where both were timed."""
    pairs = [(speedup(r, who, against), r) for r in rows]
    timed = [(s, r) for s, r in pairs if s is not None]
    if not timed:
        return {"rows": 0, "geomean": None, "min": None, "min_row": None}
    low, low_row = min(timed, key=lambda p: p[0])
    return {"rows": len(timed), "geomean": geomean(s for s, _ in timed), "min": low, "min_row": _where(low_row)}


def _where(row: Mapping[str, Any]) -> str:
    shape = " ".join(f"{k}={v}" for k, v in row["shape"].items())
    return f"{row['label']} {SHORT.get(row['dtype'], row['dtype'])} T={row['tokens']} {shape}"


def _num(value: float, unit: str = "") -> str:
    text = f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    return text + unit


def _cell(cell: Mapping[str, Any] | None) -> str:
    if not cell:
        return ""
    if cell.get("status") == "ok" and cell.get("us") is not None:
        text = f"{_num(cell['us'], ' us')} · {cell['gbps']:.0f} GB/s"
        if cell.get("x_copy") is not None:
            text += f" · {cell['x_copy']:.2f}x"
        return text
    return str(cell.get("status", "")).replace("|", "/")


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {name for row in rows for name in row["contenders"]}
    return [name for name in DISPLAY if name in present]


def markdown(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """The whole report as Markdown: how to read it, then one table per family with its summary lines."""
    lines = ["# cujit serving-op benchmark", ""]
    device = meta.get("device", "?")
    lines.append(f"{device}; torch {meta.get('torch', '?')}, triton {meta.get('triton') or 'n/a'}, "
                 f"{peers_text(meta)}, cujit {meta.get('cujit', '?')}; "
                 f"torch.compile: {meta.get('compile', 'static')}; {meta.get('date', '')}")
    lines += ["", _HOW_TO_READ, ""]
    overall = summary(rows)
    if overall["rows"]:
        lines.append(f"**cujit against torch.compile over the whole sweep** (t_compile / t_cujit, geometric mean of "
                     f"{overall['rows']} rows): **{overall['geomean']:.2f}x**; slowest {overall['min']:.2f}x at "
                     f"{overall['min_row']}.")
        lines.append("")
    lines += summary_lines(rows, meta)
    if meta.get("partial"):
        lines += ["**Partial: the sweep is still running or was stopped; these are the rows done so far.**", ""]
    if meta.get("not_run"):
        lines += [f"**Not run (time limit): {len(meta['not_run'])} rows**: " + "; ".join(meta["not_run"]) + ".", ""]
    noise = [r["noise"] for r in rows if r.get("noise") is not None]
    if noise:
        lines.append(f"Noise: `copy_` is timed twice in every row; the two medians differ by "
                     f"{statistics.median(noise) * 100:.1f}% in the median row, {max(noise) * 100:.1f}% at most.")
        lines.append("")
    for family in FAMILIES:
        family_rows = [r for r in rows if r["family"] == family]
        if family_rows:
            lines += _family_table(family, family_rows)
    return "\n".join(lines).rstrip() + "\n"


_HOW_TO_READ = (
    "Each cell: the median time per call, the bandwidth over the bytes the op must move (each input read once, "
    "each output written once; formulas under each table; 1 GB = 1e9 bytes), and that bandwidth as a fraction of "
    "`copy_` of the same number of bytes in the same row (1.00x: as fast as a plain copy). Every contender of a row "
    "ran in one process, interleaved, on the same random inputs, after its output was checked against a "
    "reference; a cell with a reason instead of a time was not timed. timing `graph`: "
    f"rows of at most {GRAPH_MAX_TOKENS} tokens, a CUDA graph of 32 calls replayed, the time divided by 32 "
    "(every contender, torch.compile's kernels included); `flush`: each call timed alone between CUDA events "
    "after a 256 MiB write that flushes L2. The last column is t_torch.compile / t_cujit (above 1: cujit is "
    "faster)."
)


def _family_table(family: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = _columns(rows)
    head = ["op", "dtype", "shape", "T", "timing", "MB", "copy_", *(DISPLAY[c] for c in columns),
            "cujit vs torch.compile"]
    lines = [f"## {_title(family)}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    # A contender's note (what it moves or does differently) is numbered once per table and marked in its cells.
    notes: dict[str, int] = {}
    for r in rows:
        for name in columns:
            cell = r["contenders"].get(name) or {}
            if cell.get("note"):
                notes.setdefault(f"{DISPLAY[name]}: {cell['note']}", len(notes) + 1)

    def marked(name: str, cell: Mapping[str, Any] | None) -> str:
        text = _cell(cell)
        if cell and cell.get("note"):
            key = f"{DISPLAY[name]}: {cell['note']}"
            text += f" [{notes[key]}]"
        return text

    for r in rows:
        shape = " ".join(f"{k}={v}" for k, v in r["shape"].items())
        timing = f"graph x{r['calls_per_graph']}" if r["timing"] == "graph" else "flush"
        copy = f"{_num(r['copy_us'], ' us')} · {r['copy_gbps']:.0f} GB/s" if r.get("copy_us") else "n/a"
        if r.get("error"):
            copy = str(r["error"]).replace("|", "/")
        ratio = speedup(r)
        cells = [r["label"], SHORT.get(r["dtype"], r["dtype"]), shape, str(r["tokens"]), timing,
                 f"{r['bytes'] / 1e6:.3g}", copy, *(marked(c, r["contenders"].get(c)) for c in columns),
                 f"{ratio:.2f}x" if ratio else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    result = summary(rows)
    if result["rows"]:
        lines.append(f"- cujit against torch.compile: geometric mean {result['geomean']:.2f}x over {result['rows']} "
                     f"rows; slowest {result['min']:.2f}x at {result['min_row']}.")
    for peer in (c for c in columns if c in PEERS):
        found = summary(rows, "cujit", peer)
        if found["rows"]:
            lines.append(f"- cujit against {DISPLAY[peer]}: geometric mean {found['geomean']:.2f}x over "
                         f"{found['rows']} rows; slowest {found['min']:.2f}x at {found['min_row']}.")
        else:
            lines.append(f"- cujit against {DISPLAY[peer]}: no row timed both ({untimed_reason(rows, peer)}).")
    if "cujit unfused" in columns:
        fused = summary(rows, "cujit", "cujit unfused")
        if fused["rows"]:
            lines.append(f"- fused against cujit's two ops in sequence: geometric mean {fused['geomean']:.2f}x over "
                         f"{fused['rows']} rows; slowest {fused['min']:.2f}x at {fused['min_row']}.")
    formulas = dict.fromkeys(f"`{r['label']}`: {r['formula']}" for r in rows)
    lines.append("- bytes (T tokens, e bytes per element of the activations, c of the cache): "
                 + "; ".join(formulas) + ".")
    if notes:
        lines.append("- notes: " + "; ".join(f"[{n}] {text}" for text, n in notes.items()) + ".")
    lines.append("")
    return lines


def progress_line(index: int, total: int, row: Mapping[str, Any], elapsed: float) -> str:
    """One line per finished row: its shape, copy_ and every contender's time and ratio to copy_."""
    parts = [f"[{index:>3}/{total}] {_where(row)} ({row['timing']})"]
    if row.get("error"):
        parts.append(str(row["error"]))
    if row.get("copy_us"):
        parts.append(f"copy_ {_num(row['copy_us'], 'us')}")
    for name in DISPLAY:
        cell = row["contenders"].get(name)
        if cell is None:
            continue
        if cell.get("status") == "ok" and cell.get("us") is not None:
            ratio = f" {cell['x_copy']:.2f}x" if cell.get("x_copy") is not None else ""
            parts.append(f"{DISPLAY[name]} {_num(cell['us'], 'us')}{ratio}")
        elif not str(cell.get("status", "")).startswith("n/a"):
            parts.append(f"{DISPLAY[name]} {str(cell.get('status'))[:60]}")
    return " | ".join(parts) + f" | {elapsed:.0f} s"


def plot_name(op: str, variant: str, dtype: str, group: str) -> str:
    """``<op>[-variant]_<dtype>_<size>.png`` with only file-name-safe characters."""
    stem = f"{op}-{variant}" if variant else op
    name = f"{stem}_{SHORT.get(dtype, dtype)}_{group}.png"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def _series(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str, str], list[Mapping[str, Any]]]:
    series: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["op"], r["variant"], r["dtype"], r["group"]), []).append(r)
    return series


def write_plots(rows: Sequence[Mapping[str, Any]], folder: Path, device: str = "") -> tuple[list[Path], str]:
    """One PNG per (op, variant, dtype, size): GB/s against tokens (log x), a line per contender, copy_ dashed.

    Returns the files written and a message (why plots were skipped, or empty).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed: plots skipped (pip install 'cujit[bench]')"
    written = []
    for (op, variant, dtype, group), members in _series(rows).items():
        members = sorted(members, key=lambda r: r["tokens"])
        fig, ax = plt.subplots(figsize=(7, 4.2))
        tokens = [r["tokens"] for r in members]
        copy = [(r["tokens"], r["copy_gbps"]) for r in members if r.get("copy_gbps")]
        if copy:
            ax.plot(*zip(*copy, strict=True), "k--", label="copy_ (same bytes)", linewidth=1.2)
        for name in _columns(members):
            points = [(r["tokens"], r["contenders"][name]["gbps"]) for r in members
                      if r["contenders"].get(name, {}).get("status") == "ok"
                      and r["contenders"][name].get("gbps") is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=4, label=DISPLAY[name])
        if min(tokens) <= GRAPH_MAX_TOKENS:
            ax.axvspan(min(tokens) / 1.3, min(GRAPH_MAX_TOKENS, max(tokens)) * 1.3, color="0.92", zorder=0,
                       label="CUDA-graph replay")
        ax.set_xscale("log", base=2)
        ax.set_xticks(tokens, [str(t) for t in tokens], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("tokens")
        ax.set_ylabel("GB/s (bytes the op must move)")
        label = f"{op}[{variant}]" if variant else op
        shape = " ".join(f"{k}={v}" for k, v in members[0]["shape"].items())
        ax.set_title(f"{label} {SHORT.get(dtype, dtype)} {shape}" + (f"\n{device}" if device else ""), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / plot_name(op, variant, dtype, group)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written, ""


def write_report(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], folder: Path,
                 plots: bool = True) -> dict[str, Any]:
    """Write ``bench_ops.md``, ``bench_ops.json`` and the plots into ``folder``; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, meta)
    md = folder / "bench_ops.md"
    md.write_text(text)
    data = {"meta": dict(meta), "summary": summary(rows), "rows": list(rows)}
    js = folder / "bench_ops.json"
    js.write_text(json.dumps(data, indent=1, default=str))
    written, message = write_plots(rows, folder, str(meta.get("device", ""))) if plots else ([], "plots off")
    return {"markdown": md, "json": js, "plots": written, "plot_message": message, "text": text}


def rewrite_report(folder: Path, peak_tbps: float) -> dict[str, Any]:
    """Rewrite the Markdown and JSON in ``folder`` from its ``bench_ops.json``, with the peak bandwidth given.

    Plots are left as they are (they do not show the peak).
    """
    data = json.loads((folder / "bench_ops.json").read_text())
    return write_report(data["rows"], {**data["meta"], "peak_tbps": peak_tbps}, folder, plots=False)
