"""An evaluate job's ``result.json`` as a Markdown table (the CLI prints it; the README embeds it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _ci(s: Mapping[str, Any] | None, pct: bool = False) -> str:
    if not s:
        return "-"
    k = 100.0 if pct else 1.0
    fmt = "{:.0f}" if pct else "{:.3f}"
    mean = fmt.format(s["mean"] * k) + ("%" if pct else "")
    if s.get("n", 1) < 2:
        return mean
    return f"{mean} ({fmt.format(s['low'] * k)}..{fmt.format(s['high'] * k)})"


def trust_table(result: Mapping[str, Any]) -> str:
    """One row per method (mean and 95 % interval over images), then the random-order and centre floors."""
    head = ("| method | deletion AUC (lower better) | insertion AUC (higher better) | pointing | energy | "
            "Spearman abs, mean over cascade | Spearman abs, all randomized | SSIM, all randomized | flagged | "
            "s / image |")
    rows = [head, "|" + "---|" * 10]
    for m in result["methods"]:
        s = m["summary"]
        full = s.get("fully_randomized") or {}
        avg = s.get("cascading_mean") or {}
        flag = {True: "**yes**", False: "no", None: "-"}[m.get("flagged")]
        rows.append(f"| {m['name']} | {_ci(s['deletion_auc'])} | {_ci(s['insertion_auc'])} | "
                    f"{_ci(s.get('pointing'), pct=True)} | {_ci(s.get('energy'))} | {_ci(avg.get('spearman_abs'))} | "
                    f"{_ci(full.get('spearman_abs'))} | "
                    f"{_ci(full.get('ssim'))} | {flag} | {m['seconds_per_image']:.2f} |")
    r = result["random"]["summary"]
    rows.append(f"| *random pixel order* | {_ci(r['deletion_auc'])} | {_ci(r['insertion_auc'])} | "
                "- | - | - | - | - | - | - |")
    c = result.get("centre")
    if c:
        rows.append(f"| *centre baseline* | - | - | {_ci(c['summary']['pointing'], pct=True)} | "
                    f"{_ci(c['summary']['energy'])} | - | - | - | - | - |")
    return "\n".join(rows)
