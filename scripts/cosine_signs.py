"""How much of the fall of the top-2 cosine is a sign flip? (The fine-tuning search's CPU networks.)

DTD relevance keeps the sign of the logit it starts from (every z of Eq. 3-4 is >= 0), so where the
second class's logit is <= 0 its heatmap is <= 0 everywhere: the signed cosine with the first heatmap
then falls although the pattern may be the same (chapter 3 averages |cos| for that reason). The
committed results store only the signed mean cosine. This script re-measures the networks behind
``results/full/tuning/<dataset>/`` from their checkpoints (kept in ``$SEPDTD_CACHE``, not in git) on the
same evaluation images, checks that it reproduces each file's accuracy and signed cosine, and adds:
the mean |cos|; the shares of images whose top-1 and top-2 logits are <= 0, whose two logits have
opposite signs, and whose cosine is < 0; and the mean cosine over the images whose top-2 logit is
> 0 or <= 0, and over those whose two logits' signs agree or differ.

    python scripts/cosine_signs.py [--dataset cifar10] [--out results/full/tuning/<dataset>/cosine-signs.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import torch

from sepdtd import book, data, experiments, models, utils

REPO = Path(__file__).resolve().parent.parent
TUNING = REPO / "results" / "full" / "tuning"


def _networks(dataset: str) -> list[dict]:
    """Every network of the committed tuning files whose checkpoint is here: baselines and fine-tunes."""
    out, seen = [], set()
    root = experiments.checkpoint_root() / "full"
    for path in sorted((TUNING / dataset).glob("seed*-*.json")):
        res = json.loads(path.read_text())
        if res.get("kind") != "tuning":
            continue
        unit = experiments.make_config("full", dataset, res["seed"])
        base_ck = experiments.checkpoint_dir(unit) / "baseline.state.pt"
        if res["seed"] not in seen and base_ck.exists():
            seen.add(res["seed"])
            out.append({"label": f"seed {res['seed']} baseline", "seed": res["seed"], "file": path.name,
                        "checkpoint": base_ck, "expected": res["baseline"]})
        for ft in res["finetunes"]:
            ck = root / "tuning" / dataset / f"seed{res['seed']}-{res['config_hash']}" / \
                f"{experiments._tag(float(ft['lam']))}.state.pt"
            if ck.exists():
                out.append({"label": f"seed {res['seed']} {res['name']} λ={ft['lam']:g}", "seed": res["seed"],
                            "file": path.name, "checkpoint": ck, "expected": ft})
    return out


def _measure(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict:
    cos, logits, classes = book.top2_cosines(net, x, batch_size=batch)
    f1, f2 = logits[:, 0], logits[:, 1]
    correct = int((classes[:, 0] == y.to(classes.device)).sum())
    pos, same = f2 > 0, (f1 > 0) == (f2 > 0)

    def mean(t: torch.Tensor) -> float | None:
        return float(t.mean()) if t.numel() else None

    return {"n": int(cos.numel()), "accuracy": correct / int(y.numel()), "cosine": float(cos.mean()),
            "abs_cosine": float(cos.abs().mean()), "top1_logit_le0": float((f1 <= 0).double().mean()),
            "top2_logit_le0": float((~pos).double().mean()), "opposite_signs": float((~same).double().mean()),
            "cosine_top2_pos": mean(cos[pos]), "cosine_top2_le0": mean(cos[~pos]),
            "cosine_same_signs": mean(cos[same]), "cosine_opposite_signs": mean(cos[~same]),
            "cosine_below0": float((cos < 0).double().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10", choices=("mnist", "fashion_mnist", "cifar10"))
    ap.add_argument("--out", default=None, help="default: results/full/tuning/<dataset>/cosine-signs.json")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0, commit = time.time(), utils.git_commit()  # the commit of the code that runs, read before it runs
    out_path = Path(args.out) if args.out else TUNING / args.dataset / "cosine-signs.json"
    ds = data.load(args.dataset)
    x, y = data.to_float(torch.as_tensor(ds.x_test)), torch.as_tensor(ds.y_test)
    batch = experiments.PROFILES["full"].eval_batch_size
    rows = []
    for spec in _networks(args.dataset):
        net = models.build(args.dataset)
        net.load_state_dict(torch.load(spec["checkpoint"], map_location="cpu"))
        net.eval()
        t = time.time()
        m = _measure(net, x, y, batch)
        exp = spec["expected"]
        row = {"label": spec["label"], "seed": spec["seed"], "file": spec["file"],
               "lam": exp.get("lam", 0.0), "checkpoint": str(spec["checkpoint"].relative_to(
                   experiments.checkpoint_root())),
               "checkpoint_sha256": hashlib.sha256(spec["checkpoint"].read_bytes()).hexdigest()[:16],
               **m, "file_accuracy": exp["accuracy"], "file_cosine": exp["cosine"], "wall_s": time.time() - t}
        row["reproduces_file"] = (abs(m["accuracy"] - exp["accuracy"]) < 1e-9
                                  and abs(m["cosine"] - exp["cosine"]) < 1e-4)
        rows.append(row)
        print(f"{row['label']:>28}: acc {m['accuracy']:.4f} (file {exp['accuracy']:.4f}), cos {m['cosine']:+.3f} "
              f"(file {exp['cosine']:+.3f}), |cos| {m['abs_cosine']:.3f}; logit <= 0: top-1 "
              f"{m['top1_logit_le0']:.1%}, top-2 {m['top2_logit_le0']:.1%}; opposite signs "
              f"{m['opposite_signs']:.1%}, cos there {m['cosine_opposite_signs']}, elsewhere "
              f"{m['cosine_same_signs']}; {row['wall_s']:.0f} s", flush=True)
    out = {"kind": "cosine-signs", "dataset": args.dataset, "n_eval": int(y.numel()),
           "what": __doc__.split("\n\n")[1].replace("\n", " "),
           "provenance": {"commit": commit, "versions": utils.package_versions(),
                          "device": utils.device_name(torch.device("cpu")), "host": platform.node(),
                          "code_hash": experiments.code_hash(), "wall_s": time.time() - t0,
                          "script": "scripts/cosine_signs.py"},
           "networks": rows}
    utils.atomic_write_json(out_path, out)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
