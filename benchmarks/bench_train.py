"""Training throughput of :func:`sepdtd.training.fit` against a conventional DataLoader loop.

For each Table 1 model, on the same device, batch size and objective (cross-entropy + lam * S(W),
Eq. 5-6, with the b <= 0 projection), it times:

- ``sepdtd``: :func:`sepdtd.training.fit` for one epoch of ``steps`` batches (data on the device once,
  index-slice batches, on-device augmentation, no per-step sync); its ``History.images_per_s`` counts
  the training steps only;
- ``sepdtd(no graph)`` (CUDA only): the same without the CUDA graph of the training step;
- ``stacked xG``: :func:`sepdtd.training.fit_stacked` training G networks at once (the fine-tunes of
  a unit), in member-images/s (each image passes through all G members);
- ``dataloader(wK)``: the textbook loop — a :class:`torch.utils.data.Dataset` over uint8 HWC arrays with
  per-sample torchvision transforms (``ToTensor``; then, for CIFAR-10, ``RandomHorizontalFlip`` +
  ``RandomCrop(32, padding=3, padding_mode="edge")``, i.e. the same flips and up-to-3-px nearest-fill
  shifts), a shuffling ``DataLoader`` with ``num_workers=K``, ``.to(device)`` per batch, plain
  ``torch.optim.Adam`` and ``loss.item()`` every step.

The data are SYNTHETIC random uint8 images of the right shapes (throughput does not depend on the
pixel values); only CIFAR-10 is augmented, as in the paper (Section 5.1). Both sides get a short
warm-up that is not timed. Prints one line per (model, loop) and the ratio sepdtd / baseline.

Usage::

    python benchmarks/bench_train.py                     # CPU: 20 steps per measurement
    python benchmarks/bench_train.py --device cuda --steps 300 --json out.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sepdtd import models
from sepdtd.regularization import block_l1
from sepdtd.training import fit, fit_stacked
from sepdtd.utils import device_name, resolve_device


def _synthetic(name: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    c, h, w = models.build(name).input_shape
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


class _UInt8Images(torch.utils.data.Dataset):
    """uint8 (N, H, W, C) numpy images + labels, with per-sample torchvision transforms."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), int(self.y[i])


def _baseline_transform(name: str):
    from torchvision import transforms

    steps = [transforms.ToTensor()]  # HWC uint8 -> CHW float in [0, 1]
    if name == "cifar10":
        steps += [transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=3, padding_mode="edge")]
    return transforms.Compose(steps)


def _time_dataloader(name: str, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, steps: int, warmup: int,
                     workers: int, lam: float, device: torch.device) -> float:
    model = models.build(name, seed=0).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    biases = [m.bias for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ds = _UInt8Images(x.permute(0, 2, 3, 1).numpy(), y.numpy(), _baseline_transform(name))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda")
    running, done, t0 = 0.0, 0, None
    while done < warmup + steps:
        for xb, yb in loader:
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb) + lam * block_l1(model, 10)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for b in biases:
                    b.clamp_(max=0)
            running += loss.item()
            done += 1
            if done == warmup + steps:
                break
    return steps * batch_size / (time.perf_counter() - t0)


def _time_fit(name: str, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, steps: int, warmup: int,
              lam: float, device: torch.device, channels_last: bool = False, cuda_graph: bool = True) -> float:
    kw = dict(lam=lam, batch_size=batch_size, max_epochs=1, augment=name == "cifar10", device=device,
              progress=False, channels_last=channels_last, cuda_graph=cuda_graph)
    xv, yv = x[:batch_size], y[:batch_size]
    fit(models.build(name, seed=0), x[:warmup * batch_size], y[:warmup * batch_size], xv, yv, **kw)
    hist = fit(models.build(name, seed=0), x[:steps * batch_size], y[:steps * batch_size], xv, yv, **kw)
    return hist.images_per_s


def _time_stacked(name: str, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, steps: int, warmup: int,
                  lam: float, device: torch.device, members: int) -> float:
    """Member-images/s of :func:`sepdtd.training.fit_stacked` (``members`` fine-tunes in one stack)."""
    kw = dict(batch_size=batch_size, max_epochs=1, augment=name == "cifar10", device=device, progress=False)
    xv, yv = x[:batch_size], y[:batch_size]
    lams = [lam] * members
    fit_stacked([models.build(name, seed=0) for _ in lams], lams, x[:warmup * batch_size], y[:warmup * batch_size],
                xv, yv, **kw)
    hists = fit_stacked([models.build(name, seed=0) for _ in lams], lams, x[:steps * batch_size],
                        y[:steps * batch_size], xv, yv, **kw)
    return hists[0].images_per_s * members


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(models.MODELS), choices=models.MODELS)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CPU, 300 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3 on CPU, 30 on CUDA)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to try")
    ap.add_argument("--lam", type=float, default=0.1, help="lambda of Eq. 5 in both loops")
    ap.add_argument("--channels-last", action="store_true", help="also time fit(..., channels_last=True)")
    ap.add_argument("--stack", type=int, default=4, help="members of the fit_stacked measurement (0: skip)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    steps = args.steps or (300 if cuda else 20)
    warmup = args.warmup if args.warmup is not None else (30 if cuda else 3)
    if cuda:
        torch.backends.cudnn.benchmark = True
    print(f"device: {device_name(dev)}; batch {args.batch_size}; {steps} timed steps after {warmup} warm-up; "
          f"lam={args.lam}; synthetic uint8 data")
    rows = []
    for name in args.models:
        x, y = _synthetic(name, max(steps, warmup) * args.batch_size)
        ours = _time_fit(name, x, y, batch_size=args.batch_size, steps=steps, warmup=warmup, lam=args.lam,
                         device=dev)
        row = {"model": name, "device": device_name(dev), "sepdtd_images_per_s": ours, "baselines": {}}
        print(f"{name:14s} sepdtd          {ours:12,.0f} images/s")
        if cuda:
            ng = _time_fit(name, x, y, batch_size=args.batch_size, steps=steps, warmup=warmup, lam=args.lam,
                           device=dev, cuda_graph=False)
            row["sepdtd_no_graph_images_per_s"] = ng
            print(f"{name:14s} sepdtd(no graph) {ng:11,.0f} images/s   CUDA graph speed-up {ours / ng:5.2f}x")
        if args.stack:
            st = _time_stacked(name, x, y, batch_size=args.batch_size, steps=steps, warmup=warmup, lam=args.lam,
                               device=dev, members=args.stack)
            row[f"stacked{args.stack}_member_images_per_s"] = st
            print(f"{name:14s} stacked x{args.stack}     {st:12,.0f} member-images/s  ({st / ours:5.2f}x one fit)")
        if args.channels_last:
            cl = _time_fit(name, x, y, batch_size=args.batch_size, steps=steps, warmup=warmup, lam=args.lam,
                           device=dev, channels_last=True)
            row["sepdtd_channels_last_images_per_s"] = cl
            print(f"{name:14s} sepdtd(ch-last) {cl:12,.0f} images/s")
        for k in args.workers:
            base = _time_dataloader(name, x, y, batch_size=args.batch_size, steps=steps, warmup=warmup,
                                    workers=k, lam=args.lam, device=dev)
            row["baselines"][f"dataloader_w{k}"] = base
            print(f"{name:14s} dataloader(w{k})  {base:12,.0f} images/s   ratio sepdtd/baseline = {ours / base:5.2f}x")
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
