"""The README's evaluation example: its table and pictures, written from a real run's files.

Run the README's ``cnnviz evaluate ... --out trust`` against a service, then

    .venv/bin/python bench/trust_example.py trust/

writes the summary table (the client's :func:`cnnviz_client._trust.trust_table` of that run's
``result.json``) between the README's ``<!-- bench:trust-example -->`` markers and copies
``grid.png`` and ``curves.png`` to ``docs/trust/``. No number is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients" / "python"))

from cnnviz_client._trust import trust_table  # noqa: E402

from bench.readme import README, write_block  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the --out folder of cnnviz evaluate")
    args = p.parse_args()
    result = json.loads((args.run / "result.json").read_text())
    images = ", ".join(f"{im['label']}: {im['class_label']}" for im in result["images"][::4])
    head = (f"{result['model']}, {result['count']} images ({images}) at {result['input_size']} px, "
            f"{result['steps']} steps, randomization {result['randomization']} over "
            f"{len(result['stages']['cascading'])} stages ({', '.join(result['stages']['cascading'])}); "
            f"mean (95 % interval) over images; {result['seconds']:.0f} s in all on the machine that ran it.")
    write_block("trust-example", head + "\n\n" + trust_table(result), README)
    out = ROOT / "docs" / "trust"
    out.mkdir(exist_ok=True)
    for name in ("grid.png", "curves.png"):
        shutil.copyfile(args.run / name, out / name)


if __name__ == "__main__":
    main()
