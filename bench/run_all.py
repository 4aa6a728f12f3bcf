"""Every bench script in one command, each rewriting its own block(s) of README.md and docs/*.md.

    .venv/bin/python bench/run_all.py --readme           # the full regeneration (make bench-all)
    .venv/bin/python bench/run_all.py --quick --readme   # fewer runs: checks every script end to end

The full run is sized for a quiet 2-core machine (docs/benchmarks.md says how long it took): the
speed targets from 5 fresh processes per group, the other tables as each script's docstring says.
``--quick`` cuts runs and repeats so every block is written in a few minutes; its figures are
not to be quoted (each block's first line names the command that wrote it, ``--quick`` included).
Each script runs in its own process, one after the other; the summary gives each one's wall and
CPU time (the CPU time of a script and everything it started), which is how the full run's
length is estimated from a quick run on a busy machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
log = logging.getLogger("bench")

# Score-CAM and Ablation-CAM beside pytorch-grad-cam take most of a minute per call on the peer's side, too long
# for the full run: `bench/bench_attribution.py --only scorecam,ablationcam` prints them (no --readme).
FAST_METHODS = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "saliency", "guided_backprop",
                "deconvnet", "input_x_gradient", "guided_gradcam")

# script -> (arguments of the full run, arguments of the quick run); --readme is added to both when asked.
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "bench_speed.py": ([], ["--quick"]),
    "bench_components.py": (["--repeats", "5"], ["--quick"]),
    "bench_memory.py": (["--runs", "3"],
                        ["--quick", "--variants", "default,compile-off"]),
    "bench_attribution.py": (["--repeats", "3", "--only", ",".join(FAST_METHODS)], ["--quick"]),
    "bench_occlusion.py": (["--geometry", "32x16", "--repeats", "1", "--ppe", "4,16"],
                           ["--geometry", "32x16", "--repeats", "1", "--ppe", "1,16"]),
    "bench_batching.py": (["--modes", "on,fixed-lanes", "--clients", "1,8", "--rounds", "1", "--seconds", "4"],
                          ["--modes", "on,fixed-lanes", "--clients", "1,8", "--rounds", "1", "--seconds", "2"]),
    "bench_precision.py": (["--methods", "gradcam,deconvnet,occlusion-full", "--repeats", "5"],
                           ["--quick", "--methods", "gradcam,deconvnet"]),
    "bench_style.py": (["--rounds", "2"], ["--quick"]),
    "bench_training.py": (["--http", "--repeats", "2", "--gatys-steps", "10"], ["--quick", "--http"]),
    "bench_jobs.py": ([], ["--quick"]),
    "bench_inspection.py": (["--n", "200"], ["--quick"]),
    "bench_queue.py": (["--jobs", "40"], ["--quick"]),
    "bench_predict_explain.py": ([], ["--procs", "1", "--repeats", "3"]),
    "bench_sweep.py": ([], ["--processes", "1", "--repeats", "2"]),
    "bench_detection.py": ([], ["--processes", "1", "--masks", "100"]),
    "bench_trust.py": ([], ["--processes", "1", "--repeats", "1", "--images", "2", "--size", "48"]),
    "eval_nd_localization.py": ([], ["--signals", "20", "--volumes", "8"]),
}


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--readme", action="store_true", help="each script rewrites its block(s)")
    ap.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated script names")
    ap.add_argument("--skip", default="", help="comma-separated script names")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    chosen = [s for s in args.only.split(",") if s and s not in skip]
    summary, failed = [], []
    t_all = time.time()
    for script in chosen:
        full, quick = SCRIPTS[script]
        cmd = [sys.executable, str(BENCH / script), *(quick if args.quick else full)]
        if args.readme:
            cmd.append("--readme")
        log.info("== %s", " ".join(cmd[1:]))
        t0, c0 = time.time(), _cpu_children()
        # the repository on the path, so a script that imports ``bench.*`` runs by its file name too
        path = os.pathsep.join(filter(None, (str(BENCH.parent), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "PYTHONPATH": path}
        rc = subprocess.run(cmd, check=False, env=env).returncode
        wall, cpu = time.time() - t0, _cpu_children() - c0
        summary.append(f"{script:<22} rc {rc}  wall {wall / 60:5.1f} min  cpu {cpu / 60:5.1f} min")
        if rc:
            failed.append(script)
    summary.append(f"{'all':<22}       wall {(time.time() - t_all) / 60:5.1f} min")
    sys.stdout.write("\n".join(summary) + "\n")
    if args.readme and chosen == list(SCRIPTS):
        from bench.readme import write_block

        write_block("run-all", f"Last `python bench/run_all.py{' --quick' if args.quick else ''} --readme`, "
                               f"{os.cpu_count()} CPUs, each script's wall time and CPU time (its own and its "
                               "children's):\n\n```\n" + "\n".join(summary) + "\n```")
    if failed:
        log.error("failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
