"""Every measured figure in README.md and docs/*.md stands in a block that a bench script writes.

The rule (also at the top of docs/benchmarks.md): a *measured figure* is a number with a unit of
time (``ms``, ``µs``, ``s``, ``seconds``), a rate (``req/s``, ``images/s``, ...), a memory size in
a sentence about resident memory (``MB``/``GB``/``KB``... with ``resident`` or ``RSS``), a ratio
(``1.4x``) or a percentage that is a speed delta (``20 % faster``, ``+18 %``). It must stand
between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``, and some script under ``bench/`` must
write that block (``write_block("NAME", ...)``). Not figures: text in inline code (a value you
type: a setting, an argument), and a bound or a configured value, the number right after *every,
up to, at most, at least, within, under, below, after, past, default* or *TTL*, or in parentheses
right after a setting's name in inline code (``checks every 2 s``, ``answers in under 200 ms``,
```CNNVIZ_JOB_ORPHAN_GRACE`` (10 s)``: contracts the tests check, not speeds the bench measured).
Sizes in pixels, counts, versions and dimensions (``224 px``, ``2 cores``, ``6300x6300``) have no
such unit and are never figures. In a markdown table the unit may stand in the header: a number
alone in a column headed by a unit of time, rate or memory, or by a ratio (``fp32 ms``,
``req/s``, ``MiB``, ``bf16/fp32``, ``ratio``), is a figure too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

_NUM = r"(?<![\w.\-/])[~≈]?\d[\d,]*(?:\.\d+)?(?:\s?(?:-|–|to|->|→)\s?\d[\d,]*(?:\.\d+)?)?"
_TIME = r"(?:\s?(?:ms|µs|us|milliseconds?)|\s(?:s|secs?|seconds?))\b(?![-/])"
_RATE = r"\s?(?:req|requests?|images?|queries|query|views?|steps?|crops?|answers?|jobs?|calls?|tokens?)\s?/\s?s\b"
_MEMORY = r"\s?(?:KB|MB|GB|KiB|MiB|GiB)\b"
_RATIO = r"x(?![\w\d])"
_DELTA = r"\s?%\s?(?:faster|slower|quicker|cheaper|more|less|fewer|higher|lower|shorter|longer)\b"
_SIGNED = r"(?<![\w.])[+\-−]\d[\d,]*(?:\.\d+)?\s?%"

FIGURE = re.compile(_NUM + "(?:" + "|".join((_TIME, _RATE, _RATIO, _DELTA)) + ")|" + _SIGNED)
MEMORY = re.compile(_NUM + _MEMORY)
RESIDENT = re.compile(r"resident|\bRSS\b", re.I)
BOUND = re.compile(r"(?:§\s*\(|\bevery|\bup to|\bat most|\bat least|\bwithin|\bunder|\bbelow|\bafter|\bpast|\bdefault|"
                   r"\bTTL|\bdefaults? to|<=?|>=?)\s*(?:of\s+)?(?:about\s+)?$", re.I)
BLOCK = re.compile(r"<!-- bench:([\w.\-]+) -->(.*?)<!-- /bench:\1 -->", re.S)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
SENTENCE = re.compile(r"(?<=[.!?:;])\s+(?=[A-Z(*|-])|\n\s*\n|\n(?=\s*[|#>-])")


HEADER_UNIT = re.compile(r"\b(?:ms|µs|s|secs?|seconds?|MB|MiB|GB|GiB|KB|ratio)\b|/s\b|[a-z0-9]/[a-z]", re.I)
NUMBER_CELL = re.compile(r"^[~≈]?[\d.,]+\s*(?:x|%|ms|s)?(?:\s+/\s+[\d.,]+\s*(?:x|%|ms|s)?)*$")
MARKER_CODE = re.compile(r"`[^`\n]*<!--[^`\n]*`")  # a marker quoted in inline code is prose, not a block


def table_figures(text: str) -> list[str]:
    """Numbers alone in table columns whose header carries the unit."""
    found = []
    lines = text.splitlines()
    for i in range(len(lines) - 1):
        head, rule = lines[i].strip(), lines[i + 1].strip()
        if not (head.startswith("|") and re.fullmatch(r"\|(?:\s*:?-+:?\s*\|)+", rule)):
            continue
        cols = [c.strip() for c in head.strip("|").split("|")]
        unit_cols = [j for j, c in enumerate(cols) if HEADER_UNIT.search(c)]
        k = i + 2
        while k < len(lines) and lines[k].strip().startswith("|"):
            cells = [c.strip() for c in lines[k].strip().strip("|").split("|")]
            for j in unit_cols:
                if j < len(cells) and NUMBER_CELL.match(cells[j]):
                    found.append(f"{cells[j]!r} under {cols[j]!r} in: {lines[k].strip()[:100]}")
            k += 1
    return found


def measured_figures(text: str) -> list[str]:
    """The measured figures of ``text`` outside bench blocks, by the rule of the module docstring."""
    text = BLOCK.sub(" ", MARKER_CODE.sub(" § ", text))
    tables = table_figures(text)
    text = FENCE.sub(lambda m: INLINE_CODE.sub(" § ", m.group(0)), text)
    text = INLINE_CODE.sub(" § ", text)  # a value you type; a number in parentheses after it is its value
    found = []
    for sentence in SENTENCE.split(text):
        flat = " ".join(sentence.split())
        hits = [m for m in FIGURE.finditer(flat)]
        if RESIDENT.search(flat):
            hits += list(MEMORY.finditer(flat))
        for m in hits:
            if not BOUND.search(flat[max(0, m.start() - 30):m.start()]):
                found.append(f"{m.group(0).strip()!r} in: {flat[max(0, m.start() - 60):m.end() + 40]}")
    return found + tables


def written_blocks() -> set[str]:
    """Block names some bench script passes to write_block (as a literal beside a write_block call)."""
    names: set[str] = set()
    for script in (ROOT / "bench").rglob("*.py"):
        src = script.read_text()
        if "write_block(" in src:
            names |= set(re.findall(r"""["']([\w.\-]+)["']""", src))
    return names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_measured_figure_stands_in_a_bench_block(page: Path) -> None:
    figures = measured_figures(page.read_text())
    assert not figures, f"{page.name}: figures no bench script writes:\n" + "\n".join(figures)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_is_written_by_a_bench_script(page: Path) -> None:
    text = MARKER_CODE.sub(" ", page.read_text())
    opened = re.findall(r"<!-- bench:([\w.\-]+) -->", text)
    closed = re.findall(r"<!-- /bench:([\w.\-]+) -->", text)
    assert sorted(opened) == sorted(closed), f"{page.name}: unbalanced bench markers"
    missing = set(opened) - written_blocks()
    assert not missing, f"{page.name}: blocks no bench script writes: {sorted(missing)}"


def test_the_rule_catches_figures_and_spares_the_rest() -> None:
    caught = ["took 14 ms", "56.0 -> 63.9 req/s", "1.58x faster", "bf16 ~20 % faster", "rose +18 %",
              "1728 MB resident", "0.31 s at 512 px", "2-2.5x as long", "about 3 s after the kill",
              "| method | fp32 ms | bf16/fp32 |\n|---|---|---|\n| gradcam | 19.1 | 0.82 |"]
    spared = ["224 px", "2 cores", "torch 2.14.1", "16 x 6300x6300 PNGs", "a 3x3 convolution",
              "checks every 2 s", "answers in under 200 ms",
              "after `CNNVIZ_JOB_ORPHAN_GRACE` (10 s)", "set `CNNVIZ_BATCH_WAIT_MS` to `5 ms`",
              "a 19 MB weights file", "top-1 was 81.9 %", "422s and 503s", "within 2 % of the score",
              "<!-- bench:x -->\n5 ms\n<!-- /bench:x -->",
              "| window/stride | px |\n|---|---|\n| 32/16 | 224 |"]
    for text in caught:
        assert measured_figures(text), text
    for text in spared:
        assert not measured_figures(text), text
