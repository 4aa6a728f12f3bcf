"""Regenerating the README's tables from a bench run, between ``<!-- bench:NAME -->`` markers.

A bench script given ``--readme`` replaces the text between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` with what it just printed, so the tables never drift from the bench.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def write_block(name: str, text: str, path: Path = README) -> None:
    """Put ``text`` between the block's markers in ``path`` (which must already hold them)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    doc = path.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path.name} has no {start} ... {end} block to regenerate")
    path.write_text(pattern.sub(lambda _: f"{start}\n{text.strip()}\n{end}", doc, count=1))
