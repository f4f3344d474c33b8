"""The per-op summary of the serving-op sweep: cujit against each contender, and the fraction of peak bandwidth.

Works on the row dicts that ``report.py`` describes. For each op (its label: ``op`` or ``op[variant]``) and each
contender timed beside cujit: the geometric mean of t_contender / t_cujit over the rows where both were timed, and
the worst row. And cujit's bandwidth over the bytes the op must move as a fraction of the card's peak DRAM
bandwidth, over the rows timed with L2 flushed (the rows of many tokens; the CUDA-graph rows of a few tokens are
bound by latency, not bandwidth). The peak comes from :data:`PEAK_TBPS` by device name, or is given.

Rerun on a saved sweep, e.g. to regenerate the README's table::

    python -m cujit.tools.bench.summary bench-ops/bench_ops.json [--peak-tbps 3.35] [--readme README.md]

``--readme FILE`` rewrites the lines between ``<!-- bench-ops-summary:begin -->`` and
``<!-- bench-ops-summary:end -->`` in FILE; without it the table is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .cases import SHORT

__all__ = [
    "DISPLAY",
    "PEAK_TBPS",
    "PEERS",
    "README_BEGIN",
    "README_END",
    "geomean",
    "main",
    "op_summaries",
    "peak_for",
    "readme_table",
    "replace_readme_table",
    "speedup",
    "summary_lines",
    "untimed_reason",
]

#: Column titles of the contenders, in column order (a contender not named here is shown by its own name).
DISPLAY: dict[str, str] = {"cujit": "cujit", "cujit unfused": "cujit (unfused)", "eager": "torch eager",
                           "compile": "torch.compile", "liger": "Liger", "quack": "QuACK", "flashinfer": "FlashInfer"}
#: The contenders that are other libraries' kernels (``liger.py``, ``quack.py``, ``flashinfer.py``): the key of
#: each in a sweep's meta (its version, and ``<key>_problem``: why it could not be used) and its distribution.
PEERS: dict[str, str] = {"liger": "liger-kernel", "quack": "quack-kernels", "flashinfer": "flashinfer-python"}

#: Peak DRAM bandwidth in TB/s (1e12 bytes/s) as the vendor states it, by a part of the device name as torch
#: reports it; the first entry whose key the name contains (case-insensitive) applies, so variants come first.
PEAK_TBPS: tuple[tuple[str, float], ...] = (
    ("H200", 4.8),
    ("H100 NVL", 3.9),
    ("H100 PCIe", 2.0),
    ("H100", 3.35),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("H20", 4.0),
    ("B200", 8.0),
    ("A100-SXM4-80GB", 2.039),
    ("A100 80GB PCIe", 1.935),
    ("A100", 1.555),  # the 40 GB parts
    ("L40S", 0.864),
    ("L4", 0.3),
)
README_BEGIN = "<!-- bench-ops-summary:begin -->"
README_END = "<!-- bench-ops-summary:end -->"


def geomean(values: Iterable[float]) -> float | None:
    """The geometric mean of positive values; None for none."""
    logs = [math.log(v) for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(logs) / len(logs)) if logs else None


def _us(row: Mapping[str, Any], name: str) -> float | None:
    cell = row["contenders"].get(name)
    if not cell or cell.get("status") != "ok" or cell.get("us") is None:
        return None
    return float(cell["us"])


def speedup(row: Mapping[str, Any], who: str = "cujit", against: str = "compile") -> float | None:
    """``t_against / t_who`` (above 1: ``who`` is faster), or None where either was not timed."""
    mine, theirs = _us(row, who), _us(row, against)
    return theirs / mine if mine and theirs else None


def peak_for(meta: Mapping[str, Any]) -> tuple[float | None, str]:
    """The peak DRAM bandwidth in TB/s for a sweep, and where it comes from.

    ``meta["peak_tbps"]`` when given (a flag), else the :data:`PEAK_TBPS` entry of ``meta["device"]``; None (and
    why) when neither applies.
    """
    given = meta.get("peak_tbps")
    if given is not None:
        return float(given), "given"
    device = str(meta.get("device") or "")
    for key, tbps in PEAK_TBPS:
        if key.lower() in device.lower():
            return tbps, f"{key} in the table of cujit/tools/bench/summary.py"
    return None, f"no entry for {device or 'an unnamed device'} in the table of cujit/tools/bench/summary.py"


def _contenders(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every contender besides cujit in these rows: the report's columns first, then any other in name order."""
    present = {name for row in rows for name in row["contenders"]} - {"cujit"}
    return [n for n in DISPLAY if n in present] + sorted(present - set(DISPLAY))


def _where(row: Mapping[str, Any]) -> str:
    shape = " ".join(f"{k}={v}" for k, v in row["shape"].items())
    return f"{SHORT.get(row['dtype'], row['dtype'])} T={row['tokens']} {shape}".rstrip()


def op_summaries(rows: Sequence[Mapping[str, Any]], peak_tbps: float | None) -> list[dict[str, Any]]:
    """One summary per op label, in the order the labels first appear.

    Each: ``label``, ``rows`` (how many), ``against`` (per contender: ``rows`` timed beside cujit, ``geomean`` of
    t_contender / t_cujit, ``worst`` ratio and ``worst_row``), ``why_not`` (per other library of :data:`PEERS`
    in the op's rows but never timed beside cujit: why, from its cells), and ``peak`` (None without a peak, else
    over the flushed rows where cujit was timed: ``rows``, ``min`` and ``max`` fractions, and ``max_row``).
    """
    labels = list(dict.fromkeys(r["label"] for r in rows))
    contenders = _contenders(rows)
    found = []
    for label in labels:
        members = [r for r in rows if r["label"] == label]
        against: dict[str, dict[str, Any]] = {}
        for name in contenders:
            timed = [(s, r) for r in members if (s := speedup(r, "cujit", name)) is not None]
            if timed:
                worst, worst_row = min(timed, key=lambda p: p[0])
                against[name] = {"rows": len(timed), "geomean": geomean(s for s, _ in timed), "worst": worst,
                                 "worst_row": _where(worst_row)}
        why_not = {name: untimed_reason(members, name) for name in contenders
                   if name in PEERS and name not in against and any(name in r["contenders"] for r in members)}
        peak = None
        if peak_tbps:
            fractions = [(float(cell["gbps"]) / (peak_tbps * 1000.0), r) for r in members
                         if r.get("timing") == "flush" and (cell := r["contenders"].get("cujit") or {})
                         and cell.get("status") == "ok" and cell.get("gbps") is not None]
            if fractions:
                high, high_row = max(fractions, key=lambda p: p[0])
                peak = {"rows": len(fractions), "min": min(f for f, _ in fractions), "max": high,
                        "max_row": _where(high_row)}
        found.append({"label": label, "rows": len(members), "against": against, "why_not": why_not, "peak": peak})
    return found


def untimed_reason(rows: Sequence[Mapping[str, Any]], name: str) -> str:
    """Why contender ``name`` has no ratio to cujit in these rows: the first reason, and how many others follow.

    Row by row, the reason is its cell's status where it was not timed, "cujit not timed" where it was.
    """
    reasons: dict[str, None] = {}
    for row in rows:
        cell = row["contenders"].get(name)
        if cell is None:
            continue
        status = str(cell.get("status", ""))
        reasons[status if status != "ok" else "cujit not timed"] = None
    if not reasons:
        return f"no {DISPLAY.get(name, name)} cell"
    first, more = next(iter(reasons)).replace("|", "/"), len(reasons) - 1
    return first if not more else f"{first} (and {more} other reason{'s' if more > 1 else ''})"


def _ratio(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return ""
    return f"{entry['geomean']:.2f}x (worst {entry['worst']:.2f}x)"


def _peak_cell(peak: Mapping[str, Any] | None) -> str:
    if not peak:
        return ""
    if peak["rows"] == 1:
        return f"{peak['max'] * 100:.0f}%"
    return f"{peak['min'] * 100:.0f}-{peak['max'] * 100:.0f}%"


def _peak_sentence(peak_tbps: float | None, source: str) -> str:
    if peak_tbps is None:
        return f"Peak DRAM bandwidth: unknown ({source}; `--peak-tbps` gives it), so no fraction of peak."
    return (f"Peak DRAM bandwidth used for the fraction of peak: {peak_tbps:g} TB/s ({source}); the fraction is "
            f"cujit's bandwidth over the bytes the op must move, in the rows timed with L2 flushed.")


def summary_lines(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[str]:
    """The report's "Summary per op" section: a table of every op against every contender, and the peak used."""
    peak_tbps, source = peak_for(meta)
    summaries = op_summaries(rows, peak_tbps)
    contenders = [n for n in _contenders(rows) if any(n in s["against"] or n in s["why_not"] for s in summaries)]
    if not summaries:
        return []
    head = ["op", "rows", *(f"vs {DISPLAY.get(n, n)}" for n in contenders), "cujit, fraction of peak",
            "best fraction at"]
    lines = ["## Summary per op", "",
             "t_contender / t_cujit (above 1: cujit is faster): the geometric mean over the rows where both were "
             "timed, and the worst row. " + _peak_sentence(peak_tbps, source), "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in summaries:
        cells = [f"`{s['label']}`", str(s["rows"]), *(_ratio(s["against"].get(n)) or s["why_not"].get(n, "")
                                                      for n in contenders),
                 _peak_cell(s["peak"]), s["peak"]["max_row"] if s["peak"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    worst = [(entry["worst"], s["label"], n, entry["worst_row"]) for s in summaries
             for n, entry in s["against"].items()]
    behind = sorted(w for w in worst if w[0] < 1.0)
    if behind:
        lines.append("- where cujit is behind: " + "; ".join(
            f"`{label}` {ratio:.2f}x {DISPLAY.get(name, name)} at {where}" for ratio, label, name, where in behind)
            + ".")
        lines.append("")
    return lines


def readme_table(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """The README's table of the serving ops: per op, cujit against torch.compile and the best other contender.

    The best other contender of a row is the one with the lowest geometric mean (the closest to cujit).
    """
    peak_tbps, source = peak_for(meta)
    summaries = op_summaries(rows, peak_tbps)
    device = meta.get("device", "an unnamed device")
    lines = [f"Measured on {device} with `python -m cujit bench --ops` ({meta.get('date') or 'date not recorded'}); "
             f"t_peer / t_cujit, geometric mean over the op's rows (worst row). "
             + _peak_sentence(peak_tbps, source), "",
             "| op | rows | vs torch.compile | closest other peer | cujit, fraction of peak |",
             "| --- | --- | --- | --- | --- |"]
    for s in summaries:
        others = {n: e for n, e in s["against"].items() if n not in ("compile", "cujit unfused")}
        closest = min(others.items(), key=lambda item: item[1]["geomean"]) if others else None
        peer = f"{DISPLAY.get(closest[0], closest[0])}: {_ratio(closest[1])}" if closest else ""
        lines.append(f"| `{s['label']}` | {s['rows']} | {_ratio(s['against'].get('compile'))} | {peer} | "
                     f"{_peak_cell(s['peak'])} |")
    return "\n".join(lines) + "\n"


def replace_readme_table(text: str, table: str) -> str:
    """``text`` with the lines between the README markers replaced by ``table``.

    Raises:
        ValueError: the markers are missing, or out of order.
    """
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < 0 or end < begin:
        raise ValueError(f"README: expected the lines {README_BEGIN} and {README_END} around the table, in that "
                         f"order")
    start = begin + len(README_BEGIN)
    return text[:start] + "\n" + table + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the README table of a saved sweep, or write it into a README between the markers."""
    p = argparse.ArgumentParser(prog="python -m cujit.tools.bench.summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", type=Path, help="bench_ops.json written by `python -m cujit bench --ops`")
    p.add_argument("--peak-tbps", type=float, help="the card's peak DRAM bandwidth in TB/s (default: by device name)")
    p.add_argument("--readme", type=Path, help="rewrite the table between the markers in this file")
    args = p.parse_args(argv)
    if args.peak_tbps is not None and not args.peak_tbps > 0:
        p.error(f"--peak-tbps: expected a positive number, got {args.peak_tbps}")
    try:
        data = json.loads(args.json.read_text())
        rows, meta = data["rows"], dict(data["meta"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        p.error(f"{args.json}: expected a bench_ops.json with rows and meta ({exc})")
    if args.peak_tbps is not None:
        meta["peak_tbps"] = args.peak_tbps
    table = readme_table(rows, meta)
    if args.readme is None:
        sys.stdout.write(table)
        return 0
    try:
        args.readme.write_text(replace_readme_table(args.readme.read_text(), table))
    except ValueError as exc:
        p.error(str(exc))
    print(f"wrote the table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
