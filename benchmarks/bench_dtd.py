"""Throughput of :func:`sepdtd.dtd.heatmap` against zennit 0.5.1 and the plain input gradient.

For the paper's CIFAR-10 and MNIST nets (Table 1; :func:`sepdtd.models.build`, random negative biases
clamped to b <= 0, evaluation mode) and K = 2 (top-2) and K = 10 (all) classes per image, every method
produces K explanations per image for the same classes:

- ``sepdtd``: one call of :func:`sepdtd.dtd.heatmap` (one shared forward pass, one class-batched
  backward pass).
- ``zennit``: the equivalent composite (ZBox on the first layer, ZPlus(zero_params='bias') on later
  Conv/Linear, Norm on AvgPool, Pass on ReLU, gradient on MaxPool), registered once outside the timed
  loop on its own copy of the model. zennit explains one output vector per backward, so two correct
  ways are timed and the faster one is the reference: ``rep`` (the batch repeated K times, one
  forward and one backward of B*K) and ``loop`` (one forward, K backward passes of B).
- ``grad``: the plain input gradient of each selected logit (parameters frozen, so no weight
  gradients). Three correct ways are timed and the fastest is the reference: ``rep`` (batch repeated
  K times: forward and backward of B*K), ``loop`` (one forward, K backward passes) and ``vmap`` (one
  forward, one backward batched over the K one-hot output vectors with ``is_grads_batched``: the same
  shape of work as DTD's shared forward plus one B*K backward).

Methods are timed in interleaved rounds (one call of each method per round, order fixed), so slow
phases of a shared machine hit all methods alike. A way that took over 1.5x as long as another way of
the same reference in the warm-up round is not timed further (it cannot be the fastest; it is listed
with its warm-up time). Reported: median seconds per call, heatmaps/s
(B*K / time), and per-round ratios (median over rounds) sepdtd/zennit throughput and sepdtd/grad time.
On CUDA also the peak memory of one call above the resident model and input. Before timing, the
three sepdtd / zennit / grad outputs are checked (sepdtd == zennit to 1e-4 relative in float32).

Usage: ``python benchmarks/bench_dtd.py [--device cpu|cuda|auto] [--batch N] [--threads 2] [--rounds 7]
[--clock wall|cpu]``. The CPU targets (top-2: >= 3x zennit's throughput and <= 1.5x the gradient's
time; all 10: >= 6x zennit's throughput) are checked on CPU runs; a PASS/FAIL line each. Other
programs competing for the cores slow zennit (many small operations) more than sepdtd: compare runs on
a quiet machine, or use ``--threads 1 --clock cpu``.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from sepdtd import dtd, models

TARGETS = {  # (K, quantity): minimum (throughput ratio) or maximum (time ratio), CPU only
    (2, "vs_zennit"): 3.0,
    (10, "vs_zennit"): 6.0,
    (2, "vs_grad_time"): 1.5,
}


def _composite(low: float, high: float, eps: float):
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.rules import Norm, Pass, ZBox, ZPlus

    return SpecialFirstLayerMapComposite(
        layer_map=[
            (nn.ReLU, Pass()),
            ((nn.Conv2d, nn.Linear), ZPlus(stabilizer=eps, zero_params="bias")),
            (nn.AvgPool2d, Norm(stabilizer=eps)),
        ],
        first_map=[((nn.Conv2d, nn.Linear), ZBox(low, high, stabilizer=eps))],
    )


def _onehot_logits(y: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(y).scatter_(1, cls, y.detach().gather(1, cls))


def make_methods(model: nn.Module, zmodel: nn.Module, gmodel: nn.Module, x: torch.Tensor,
                 cls: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Callables returning (B, K, H, W) explanations (gradients: (B, K, C, H, W))."""
    b, k = cls.shape
    flat_cls = cls.reshape(-1, 1)

    def sepdtd() -> torch.Tensor:
        return dtd.heatmap(model, x, cls, low=0.0, high=1.0)

    def zennit_rep() -> torch.Tensor:
        xr = x.repeat_interleave(k, 0).requires_grad_()
        y = zmodel(xr)
        r, = torch.autograd.grad(y, xr, _onehot_logits(y, flat_cls))
        return r.view(b, k, *x.shape[1:]).sum(2)

    def zennit_loop() -> torch.Tensor:
        xr = x.clone().requires_grad_()
        y = zmodel(xr)
        out = []
        for j in range(k):
            r, = torch.autograd.grad(y, xr, _onehot_logits(y, cls[:, j:j + 1]), retain_graph=j < k - 1)
            out.append(r.sum(1))
        return torch.stack(out, 1)

    def grad_rep() -> torch.Tensor:
        xr = x.repeat_interleave(k, 0).requires_grad_()
        y = gmodel(xr)
        g, = torch.autograd.grad(y, xr, torch.zeros_like(y).scatter_(1, flat_cls, 1.0))
        return g.view(b, k, *x.shape[1:])

    def grad_loop() -> torch.Tensor:
        xr = x.clone().requires_grad_()
        y = gmodel(xr)
        out = []
        for j in range(k):
            g, = torch.autograd.grad(y, xr, torch.zeros_like(y).scatter_(1, cls[:, j:j + 1], 1.0),
                                     retain_graph=j < k - 1)
            out.append(g)
        return torch.stack(out, 1)

    def grad_vmap() -> torch.Tensor:
        xr = x.clone().requires_grad_()
        y = gmodel(xr)
        onehots = torch.zeros(k, *y.shape, dtype=y.dtype, device=y.device)
        onehots.scatter_(2, cls.T.unsqueeze(-1), 1.0)
        g, = torch.autograd.grad(y, xr, onehots, is_grads_batched=True)
        return g.transpose(0, 1)

    return {"sepdtd": sepdtd, "zennit/rep": zennit_rep, "zennit/loop": zennit_loop,
            "grad/rep": grad_rep, "grad/loop": grad_loop, "grad/vmap": grad_vmap}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], torch.Tensor], device: torch.device, clock: Callable[[], float] = time.perf_counter
          ) -> tuple[float, float]:
    """(seconds, peak bytes above what was allocated before; 0 on CPU) of one call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    _sync(device)
    t0 = clock()
    out = fn()
    _sync(device)
    t = clock() - t0
    del out
    peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else 0.0
    return t, float(peak)


def check(methods: dict[str, Callable[[], torch.Tensor]]) -> None:
    """sepdtd == every zennit way; every gradient way agrees (TF32 off while checking)."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = methods["sepdtd"]()
        for name in ("zennit/rep", "zennit/loop"):
            z = methods[name]()
            err = float((ref - z).abs().max() / z.abs().max())
            if err > 1e-4:
                raise AssertionError(f"sepdtd and {name} disagree: max relative difference {err:.3g}")
        g = methods["grad/rep"]()
        for name in ("grad/loop", "grad/vmap"):
            err = float((methods[name]() - g).abs().max() / g.abs().max())
            if err > 1e-4:
                raise AssertionError(f"{name} and grad/rep disagree: max relative difference {err:.3g}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def bench(name: str, batch: int, k: int, device: torch.device, rounds: int, warmup: int,
          channels_last: bool, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time every method on one (model, K) case; see the module docstring."""
    model = models.build(name, seed=0)
    biases = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(-0.05, 0.0, generator=biases)
    models.clamp_biases_(model).eval().to(device)
    zmodel = copy.deepcopy(model)
    gmodel = copy.deepcopy(model).requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *model.input_shape, generator=gen).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        cls = model(x).topk(k).indices
    composite = _composite(0.0, 1.0, 1e-9)
    composite.register(zmodel)
    try:
        methods = make_methods(model, zmodel, gmodel, x, cls)
        check(make_methods(model, zmodel, gmodel, x[:8], cls[:8]))
        first: dict[str, float] = {}
        for _ in range(max(warmup, 1)):
            for m, fn in methods.items():
                first[m] = timed(fn, device, clock)[0]
        # A way of computing the same reference that is clearly slower than another one can only
        # lose: stop timing it (saves minutes; it is listed with its warm-up time).
        dropped = {m for m in methods if m != "sepdtd" and first[m] > 1.5 * min(
            t for n, t in first.items() if n.split("/")[0] == m.split("/")[0])}
        times: dict[str, list[float]] = {m: [] for m in methods if m not in dropped}
        peaks: dict[str, float] = {m: 0.0 for m in methods}
        for _ in range(rounds):
            for m in times:
                t, p = timed(methods[m], device, clock)
                times[m].append(t)
                peaks[m] = max(peaks[m], p)
    finally:
        composite.remove()
    zbest = min((m for m in times if m.startswith("zennit/")), key=lambda m: statistics.median(times[m]))
    gbest = min((m for m in times if m.startswith("grad/")), key=lambda m: statistics.median(times[m]))
    per_round_z = [z / s for s, z in zip(times["sepdtd"], times[zbest])]
    per_round_g = [s / g for s, g in zip(times["sepdtd"], times[gbest])]
    return {
        "model": name, "batch": batch, "k": k, "device": str(device), "times": times, "peaks": peaks,
        "dropped": {m: first[m] for m in sorted(dropped)}, "zennit": zbest, "grad": gbest,
        "vs_zennit": statistics.median(per_round_z), "vs_grad_time": statistics.median(per_round_g),
        "mem_vs_grad": (peaks["sepdtd"] / peaks[gbest]) if peaks[gbest] else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    ap.add_argument("--batch", type=int, default=None, help="images per call (default: 200 on CPU, 1000 on CUDA)")
    ap.add_argument("--models", nargs="+", default=["cifar10", "mnist"], choices=list(models.MODELS))
    ap.add_argument("--ks", nargs="+", type=int, default=[2, 10], help="classes per image (default: 2 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default: 7)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    ap.add_argument("--channels-last", action="store_true", help="feed channels-last inputs")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time (default), or this process's CPU time: with --threads 1 the latter is "
                         "robust to other programs competing for the cores")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    batch = args.batch or (1000 if device.type == "cuda" else 200)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"# sepdtd DTD benchmark: torch {torch.__version__}, {dev_name}, batch {batch}, "
          f"{args.rounds} rounds, {args.clock} clock, load average {load:.2f}")
    print("# reference 'grad' = fastest of: rep (B*K forward+backward), loop (1 forward, K backwards), "
          "vmap (1 forward, 1 backward batched over K); 'zennit' = faster of rep/loop")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    results = [bench(m, batch, k, device, args.rounds, args.warmup, args.channels_last, clock)
               for m in args.models for k in args.ks]
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    header = f"{'model':8} {'K':>3} {'method':12} {'median s':>9} {'heatmaps/s':>11}"
    if device.type == "cuda":
        header += f" {'peak MiB':>9}"
    print(header)
    for r in results:
        n = r["batch"] * r["k"]
        for m, ts in r["times"].items():
            med = statistics.median(ts)
            mark = " *" if m in (r["zennit"], r["grad"]) else ""
            line = f"{r['model']:8} {r['k']:>3} {m:12} {med:9.4f} {n / med:11.0f}"
            if device.type == "cuda":
                line += f" {r['peaks'][m] / 2**20:9.1f}"
            print(line + mark)
        for m, t in r["dropped"].items():
            print(f"{r['model']:8} {r['k']:>3} {m:12} {t:9.4f} {n / t:11.0f}  (warm-up only: >1.5x a faster way)")
    print("# * = reference used in the ratios (fastest correct way)")
    print(f"{'model':8} {'K':>3} {'sepdtd/zennit throughput':>25} {'sepdtd/grad time':>17}"
          + (f" {'sepdtd/grad peak mem':>21}" if device.type == "cuda" else ""))
    for r in results:
        line = f"{r['model']:8} {r['k']:>3} {r['vs_zennit']:25.2f} {r['vs_grad_time']:17.2f}"
        if device.type == "cuda":
            line += f" {r['mem_vs_grad']:21.2f}"
        print(line)
    print(f"# load average after: {load_after:.2f}")

    failed = False
    if device.type == "cpu":
        for r in results:
            for (k, what), bound in TARGETS.items():
                if r["k"] != k:
                    continue
                value = r[what]
                ok = value >= bound if what == "vs_zennit" else value <= bound
                failed |= not ok
                rel = ">=" if what == "vs_zennit" else "<="
                label = "throughput vs zennit" if what == "vs_zennit" else "time vs input gradient"
                print(f"{'PASS' if ok else 'FAIL'} {r['model']} top-{k} {label}: {value:.2f} (target {rel} {bound})")
    else:
        print("# targets are defined for CPU; none checked on", device)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
