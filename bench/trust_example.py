"""The README's evaluation example: its table and pictures, written from a real run's files.

Run the README's ``cnnviz evaluate ... --out trust`` against a service, then

    .venv/bin/python bench/trust_example.py trust/

writes the summary table (the client's :func:`cnnviz_client._trust.trust_table` of that run's
``result.json``) between the README's ``<!-- bench:trust-example -->`` markers, copies ``grid.png``
to ``docs/trust/`` and draws ``curves.png`` there from the run's mean curves. No number is typed by hand.
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
from cnnviz.render import encode_png  # noqa: E402
from cnnviz.render.trust import curves_picture  # noqa: E402


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
    shutil.copyfile(args.run / "grid.png", out / "grid.png")
    # The curves are drawn again from the run's own numbers, with this checkout's axis labels.
    curves = curves_picture(result["fractions"], [(m["name"], m["mean_curves"]["deletion"],
                                                   m["mean_curves"]["insertion"]) for m in result["methods"]],
                            (result["random"]["mean_curves"]["deletion"], result["random"]["mean_curves"]["insertion"]),
                            title=f"Mean deletion and insertion curves over {result['count']} images, "
                                  f"{result['model']}")
    (out / "curves.png").write_bytes(encode_png(curves))


if __name__ == "__main__":
    main()
