"""What each chapter finds, in one or two sentences generated from the results it shows.

Every chapter of the book opens with a box: what the paper says, and what we find
(:func:`sepdtd.book.opening`). Where the finding holds numbers, it is generated here from the aggregated
rows of :func:`sepdtd.report.rows` (or the chapter's own results), so that the box always agrees with
the tables below it. Each function returns plain Markdown; none reads files.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from sepdtd import report

__all__ = ["tables", "signs", "tuning", "diffusion", "baselines", "penalty", "heatmaps", "weights",
           "ground_truth", "causes", "join"]

#: The λ at which the book reads a fine-tune (the paper's Figures 4-6).
LAM = 1.0


def join(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _label(dataset: str) -> str:
    return report.DATASET_LABELS.get(dataset, dataset)


def _span(values: Iterable[float | None], fmt: str) -> str | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    lo, hi = format(min(vals), fmt), format(max(vals), fmt)
    return lo if lo == hi else f"{lo}–{hi}"


def _seeds(rows: Sequence[Mapping]) -> str:
    seeds = sorted({s for r in rows for s in r["seeds"]})
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + join([str(s) for s in seeds])


def _verdicts(claims: Sequence[Mapping], name: str) -> str:
    """"held for MNIST, inconclusive for CIFAR-10": the data sets of each verdict of claim ``name``."""
    by: dict[str, list[str]] = {}
    for c in claims:
        if c["claim"] == name:
            by.setdefault(c["verdict"], []).append(_label(c["dataset"]))
    order = ("held", "not held", "inconclusive", "open")
    return "; ".join(f"{w} for {join(by[w])}" for w in order if w in by)


def tables(rows: Sequence[Mapping], lam: float = LAM) -> str:
    """Chapter 6: the verdicts of Section 5.2's two claims at ``lam``, from the paired intervals."""
    cs = [c for c in report.claims(rows) if c["lam"] == lam and c["claim"] in ("diffusion", "accuracy")]
    if not cs:
        return "No fine-tuned results to judge."
    kept = [r for r in rows if r["lam"] == lam]
    rises = _verdicts(cs, "diffusion") or f"not measured for these results (no d[{report.PRIMARY_CONVENTION}])"
    text = (f"At λ = {lam:g}, *d rises* is {rises}. *Accuracy within "
            f"{report.ACCURACY_TOLERANCE:g}* is {_verdicts(cs, 'accuracy') or 'not measured'}.")
    if any(c["verdict"] == "open" for c in cs):
        text += " Open means one seed, with no interval."
    return text + f" ({_seeds(kept)}, paired with their own baselines.)"


def signs(rows: Sequence[Mapping]) -> str:
    """Chapter 6-7: how often the top logits are <= 0, before and after fine-tuning."""
    with_signs = [r for r in rows if r["logit_nonpositive"][1] is not None]
    if not with_signs:
        return "These results predate the sign fields: their networks were not kept."
    base = _span([r["logit_nonpositive"][1] for r in with_signs if r["lam"] == 0], ".0%")
    tuned = _span([r["logit_nonpositive"][1] for r in with_signs if r["lam"] > 0], ".0%")
    top1 = _span([r["logit_nonpositive"][0] for r in with_signs if r["lam"] > 0], ".0%")
    names = join(sorted({_label(r["dataset"]) for r in with_signs}))
    parts = []
    if tuned is not None:
        parts.append(f"After fine-tuning, the top-2 logit is ≤ 0 on {tuned} of the test images, and the top-1 "
                     f"logit on {top1}.")
    if base is not None:
        parts.append(f"For the baselines the top-2 share is {base}.")
    parts.append(f"Where a logit is ≤ 0, DTD explains it with a negated pattern ({names}).")
    return " ".join(parts)


def tuning(tuned: Sequence[Mapping], lam: float = LAM) -> str:
    """Appendix: what the block structure costs against a control fine-tuned without the penalty."""
    from sepdtd import tuning as tuning_

    if not tuned:
        return "No fine-tuning search results in this checkout."
    rows = tuning_.summary(tuned)
    costs = []
    for r in rows:
        if r["name"] != "paper" or r["lam"] != lam:
            continue
        ctrl = report.control_of(r, rows)
        if ctrl is not None:
            costs.append((r["dataset"], r["seed"], ctrl["accuracy"] - r["accuracy"]))
    if not costs:
        return "No fine-tune of the paper's settings has a control yet."
    by: dict[str, list[tuple[int, float]]] = {}
    for ds, sd, cost in costs:
        by.setdefault(ds, []).append((sd, cost))
    parts = [f"{_label(ds)}: {join([f'{c:.3f}' for _, c in sorted(v)])} at seed{'s' if len(v) > 1 else ''} "
             f"{join([str(s) for s, _ in sorted(v)])}" for ds, v in by.items()]
    below = all(c > 0 for *_, c in costs)
    above = all(c < 0 for *_, c in costs)
    verb = "ends below" if below else "ends above" if above else "ends on either side of"
    return (f"With the paper's settings, λ = {lam:g} {verb} a control fine-tuned without the penalty. "
            f"The control's test accuracy minus λ = {lam:g}'s is {'; '.join(parts)}.")


def diffusion(rows: Sequence[Mapping]) -> str:
    """Chapter 3: how alike the baselines' top-1 and top-2 heatmaps are, without their signs."""
    base = [r for r in rows if r["lam"] == 0 and r["abs_cosine"] is not None]
    if not base:
        return "The results shown lack |cos|: their networks were not kept."
    alike = [r for r in base if r["abs_cosine"] > report.DIFFUSED_COSINE]
    cells = join([f"{r['abs_cosine']:.3f} for {_label(r['dataset'])}" for r in base])
    verdict = ("one pattern up to sign, as the paper says" if len(alike) == len(base) else
               f"one pattern up to sign for {join([_label(r['dataset']) for r in alike])} only" if alike else
               "not one pattern")
    return (f"The baselines' top-1 and top-2 heatmaps are {verdict}. Their mean |cos| is {cells} "
            f"({_seeds(base)}).")


def baselines(rows: Sequence[Mapping]) -> str:
    """Chapter 4: the baselines' accuracy against the paper's Table 3."""
    cs = [c for c in report.claims(rows) if c["claim"] == "baseline_accuracy"]
    if not cs:
        return "No baseline results."
    cells = join([f"{c['ours']:.4f} for {_label(c['dataset'])}" for c in cs])
    return (f"Our baselines reach a test accuracy of {cells}. The paper's value minus 0.01 is "
            f"{_verdicts(cs, 'baseline_accuracy')}.")


def _inblock(r: Mapping) -> float | None:
    vals = [v for v in r.get("inblock") or [] if v is not None]
    return sum(vals) / len(vals) if vals else None


def penalty(rows: Sequence[Mapping]) -> str:
    """Chapter 5: the in-block share of the positive dense weights, before and after fine-tuning."""
    base = _span([_inblock(r) for r in rows if r["lam"] == 0], ".2f")
    tuned = _span([_inblock(r) for r in rows if r["lam"] > 0], ".2f")
    if base is None or tuned is None:
        return "No in-block shares in the results shown."
    return (f"Fine-tuning moves the share of positive dense weight inside the class blocks from {base} to "
            f"{tuned}, over every λ and data set shown.")


def heatmaps(rows: Sequence[Mapping], lam: float = LAM) -> str:
    """Chapter 7: what fine-tuning at ``lam`` does to the top-2 heatmap."""
    tuned = [r for r in rows if r["lam"] == lam and r["logit_nonpositive"][1] is not None]
    base = {r["dataset"]: r for r in rows if r["lam"] == 0}
    if not tuned:
        return "The results shown lack the sign fields: their networks were not kept."
    share = _span([r["logit_nonpositive"][1] for r in tuned], ".0%")
    cos = join([f"{base[r['dataset']]['abs_cosine']:.2f} to {r['abs_cosine']:.2f} for {_label(r['dataset'])}"
                for r in tuned if r["dataset"] in base and base[r["dataset"]]["abs_cosine"] is not None
                and r["abs_cosine"] is not None])
    text = (f"At λ = {lam:g}, the top-2 logit is ≤ 0 on {share} of the test images, so DTD draws the second "
            "heatmap as a negated pattern.")
    if cos:
        text += f" Without the sign, |cos| goes from {cos}."
    return text


def weights(rows: Sequence[Mapping], dataset: str, lam: float = LAM) -> str:
    """Chapter 8: the in-block share of one data set's dense weights, baseline and ``lam``."""
    by = {r["lam"]: r for r in rows if r["dataset"] == dataset}
    if 0.0 not in by or lam not in by:
        return f"No {_label(dataset)} results at λ = 0 and {lam:g}."
    b, t = _inblock(by[0.0]), _inblock(by[lam])
    if b is None or t is None:
        return "No in-block shares in the results shown."
    return (f"For {_label(dataset)}, the share of positive dense weight inside the class blocks is {b:.2f} for "
            f"the baseline and {t:.2f} at λ = {lam:g} ({_seeds([by[lam]])}).")


def ground_truth(rows: Sequence[Mapping], lam: float = LAM) -> str:
    """Chapter 9: does the second class's sign-corrected DTD heatmap point at its own object?

    Parameters
    ----------
    rows : sequence of dict
        :func:`sepdtd.beyond.summary`: one per (data set, network, method).
    """
    dtd = [r for r in rows if r["method"] == "dtd" and r["family"] == "lambda"]
    base = _span([r["point2"][0] for r in dtd if r["lam"] == 0], ".0%")
    tuned = _span([r["point2"][0] for r in dtd if r["lam"] == lam], ".0%")
    if base is None or tuned is None:
        return "No ground-truth results for DTD."
    names = join(sorted({_label(r["dataset"]) for r in dtd}))
    counts = sorted({r["n_seeds"] for r in dtd})
    seeds = "one seed" if counts == [1] else f"{_span(counts, 'd')} seeds"
    return (f"On images that hold two objects, DTD's sign-corrected second heatmap points at the second object "
            f"in {base} of the composites where it is defined for the baselines, and in {tuned} at λ = {lam:g}. "
            f"This covers {names}, with {seeds} each.")


#: A fall of |cos| below the baseline's by more than this counts as separation (as in chapter 10).
SEPARATED = 0.05


def causes(rows: Sequence[Mapping]) -> str:
    """Chapter 10: what makes the fine-tuned logits negative, and whether the separation survives without them.

    Each ablation fine-tunes the baseline at λ = 1 with one change; a third needs no network: DTD started
    at the logits minus each image's mean logit (*centred*). DTD is linear in its start, so centring
    rescales each heatmap and leaves |cos| as it is. A change that leaves the top-2 logit > 0 on most
    test images removes what held it down. The separation survives without the negative logits when
    such a change still lowers |cos| below the baseline's by more than :data:`SEPARATED`. Each data set
    is judged on its own, from the means over its seeds; where they differ, each verdict names its data
    sets.

    Parameters
    ----------
    rows : sequence of dict
        :func:`sepdtd.mechanism.ablation_rows`.
    """
    per = {d: _causes_of([r for r in rows if r.get("dataset") == d]) for d in dict.fromkeys(r.get("dataset")
                                                                                              for r in rows)}
    per = {d: v for d, v in per.items() if v is not None}
    if not per:
        return "No ablation results."

    def span(values: Iterable[float | None]) -> str | None:
        return _span(values, ".0%")

    text = f"At λ = {LAM:g} the top-2 logit is ≤ 0 on {span(v['p'] for v in per.values())} of the test images"
    base = span(v["b"] for v in per.values())
    text += f" (baseline: {base})." if base is not None else "."
    parts = {v["part"][0] for v in per.values() if v["part"] is not None}
    if len(parts) == 1 and len(per) == 1:
        name, before, after = next(iter(per.values()))["part"]
        text += f" Its largest change against the baseline is in the {name}: {before:+.2f} to {after:+.2f}."
    elif len(parts) == 1:
        text += f" Its largest change against the baseline is in the {parts.pop()} on every data set."
    said = []
    for tag, what in _ABLATIONS.items():
        s = span(v["shares"].get(tag) for v in per.values())
        if s is not None:
            said.append(f"{what}, on {s}")
    if said:
        text += " With " + said[0].replace(", on", ", it is ≤ 0 on", 1) + "".join(f"; with {x}" for x in said[1:]) + "."
    for key in ("free", "survival"):
        verdicts: dict[str, list[str]] = {}
        for d, v in per.items():
            if v[key] is not None:
                verdicts.setdefault(v[key], []).append(_label(d))
        if len(verdicts) == 1 and len(per) > 1 and len(next(iter(verdicts.values()))) < len(per):
            (sentence, names), = verdicts.items()
            text += f" {sentence[:-1]} ({join(names)})."
        elif len(verdicts) == 1:
            text += f" {next(iter(verdicts))}"
        else:
            text += "".join(f" {sentence[:-1]} ({join(names)})." for sentence, names in verdicts.items())
    seeds = _seeds_of(rows)
    return text + f" {join([_label(d) for d in per])}: {seeds[0].lower() + seeds[1:]}."


#: The changes of :func:`causes` (``centred``: the fine-tune at λ = 1, DTD started at the centred logits).
_ABLATIONS = {"abl-free-output-bias": "the output bias free",
              "abl-output-penalty": "the penalty on the output layer alone",
              "centred": "the logits centred before DTD"}


def _causes_of(rows: Sequence[Mapping]) -> dict | None:
    """The numbers and verdicts of :func:`causes` for one data set's rows (None without the fine-tune)."""
    paper = f"lam{LAM!r}"

    def mean(tag: str, key: str) -> float | None:
        vals = [(r[key][1] if key.endswith("logit_nonpositive") else r[key]) for r in rows if r["tag"] == tag]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    p = mean(paper, "logit_nonpositive")
    if p is None:
        return None
    shares = {t: mean(t, "logit_nonpositive") for t in _ABLATIONS if t != "centred"}
    shares["centred"] = mean(paper, "centered_logit_nonpositive")
    free = shares["abl-free-output-bias"]
    out = {"p": p, "b": mean("baseline", "logit_nonpositive"), "part": _largest_part_change(rows, paper),
           "shares": shares, "free": None, "survival": None}
    if p < 0.5:
        return out
    if free is not None:
        out["free"] = ("The constraint b ≤ 0 on the output bias holds the logits down." if free < 0.5 else
                       "The constraint b ≤ 0 on the output bias is not what holds them down.")
    if not any(v is not None for v in shares.values()):
        return out
    lifted = [t for t, v in shares.items() if v is not None and v < 0.5]
    base_cos = mean("baseline", "abs_cosine")
    cos = {t: mean(paper if t == "centred" else t, "abs_cosine") for t in lifted}
    if not lifted:
        out["survival"] = "No change lifts them, so whether the separation survives without them is open."
    elif base_cos is not None and all(c is not None for c in cos.values()):
        kept = [t for t in lifted if cos[t] < base_cos - SEPARATED]
        out["survival"] = (
            "Where a change lifts them, |cos| stays below the baseline's: the separation survives."
            if len(kept) == len(lifted) else
            f"Where a change lifts them, |cos| comes back to within {SEPARATED} of the baseline's: the "
            "separation rested on the negative logits." if not kept else
            "The changes that lift them disagree on whether the separation survives.")
    return out


_PARTS = {"in_pos": "in-block positive part", "in_neg": "in-block negative part", "off_pos": "off-block positive "
          "part", "off_neg": "off-block negative part", "bias": "bias"}


def _largest_part_change(rows: Sequence[Mapping], tag: str) -> tuple[str, float, float] | None:
    """The part of the top-2 logit that moves most from the baseline to network ``tag`` of one data set:
    its name, and its means before and after over the seeds with both; None without parts."""
    pairs = [(b["top2_parts"], r["top2_parts"]) for b in rows if b["tag"] == "baseline" and b.get("top2_parts")
             for r in rows if r["tag"] == tag and r.get("top2_parts") and r.get("seed") == b.get("seed")]
    if not pairs:
        return None
    mean = {k: (sum(a[k] for a, _ in pairs) / len(pairs), sum(c[k] for _, c in pairs) / len(pairs)) for k in _PARTS}
    k = max(mean, key=lambda k: abs(mean[k][1] - mean[k][0]))
    return _PARTS[k], mean[k][0], mean[k][1]


def _seeds_of(rows: Sequence[Mapping]) -> str:
    seeds = sorted({r["seed"] for r in rows if "seed" in r})
    if not seeds:
        return "Seeds unknown"
    return f"Seed {seeds[0]} only (n = 1)" if len(seeds) == 1 else "Seeds " + join([str(x) for x in seeds])
