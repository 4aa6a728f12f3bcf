"""Train the two demonstration convnets of :mod:`cnnviz.models.nd_demo` (seeded) and save their weights.

    python -m bench.train_nd_demo            # writes examples/nd/signal_net.safetensors, volume_net.safetensors

Adam, a few epochs on freshly generated synthetic samples; the held-out accuracy is logged. The
run is deterministic on one CPU thread (seed 0), small enough to run in a few minutes of one core.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from cnnviz.models import nd_demo

log = logging.getLogger("train_nd_demo")
OUT = Path(__file__).resolve().parent.parent / "examples" / "nd"
SEED = 0


def train(net: torch.nn.Module, data: nd_demo.Samples, held: nd_demo.Samples, epochs: int, batch: int) -> float:
    """Plain Adam on cross-entropy; returns the held-out accuracy."""
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(data.y), generator=g)
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            loss = torch.nn.functional.cross_entropy(net(data.x[idx]), data.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(held.x).argmax(1) == held.y).float().mean())
        log.info("epoch %d: loss %.4f, held-out accuracy %.3f", epoch, float(loss), acc)
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", choices=("signal", "volume"), help="train one of the two")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only != "volume":
        sig = nd_demo.signal_net()
        acc = train(sig, nd_demo.signals(3000, seed=1), nd_demo.signals(300, seed=2), epochs=6, batch=64)
        save_file({k: v.contiguous() for k, v in sig.state_dict().items()}, str(args.out / "signal_net.safetensors"))
        log.info("signal_net: held-out accuracy %.3f", acc)
    if args.only == "signal":
        return
    torch.manual_seed(SEED)
    vol = nd_demo.volume_net()
    acc = train(vol, nd_demo.volumes(600, seed=1), nd_demo.volumes(120, seed=2), epochs=4, batch=32)
    save_file({k: v.contiguous() for k, v in vol.state_dict().items()}, str(args.out / "volume_net.safetensors"))
    log.info("volume_net: held-out accuracy %.3f", acc)


if __name__ == "__main__":
    main()
