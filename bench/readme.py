"""Regenerating the published tables from a bench run, between ``<!-- bench:NAME -->`` markers.

A bench script given ``--readme`` replaces the text between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` with what it just printed, so the tables never drift from the bench. The
block may stand in the README or in any page under ``docs/`` (the speed tables live in
``docs/benchmarks.md``); the one file that holds its markers is rewritten.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))
"""Where a block may stand."""


def block_page(name: str) -> Path:
    """The one page that holds the block's opening marker."""
    start = f"<!-- bench:{name} -->"
    found = [p for p in PAGES if start in p.read_text()]
    if len(found) != 1:
        raise SystemExit(f"{start} stands in {len(found)} pages ({', '.join(p.name for p in found)}); it needs one")
    return found[0]


def write_block(name: str, text: str, path: Path | None = None) -> None:
    """Put ``text`` between the block's markers in ``path`` (default: the page that holds them)."""
    path = path or block_page(name)
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    doc = path.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path.name} has no {start} ... {end} block to regenerate")
    path.write_text(pattern.sub(lambda _: f"{start}\n{text.strip()}\n{end}", doc, count=1))
