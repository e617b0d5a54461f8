"""Chapter 10's analysis: how much of the diffusion each factor accounts for.

The chapter changes one factor at a time against the paper's setting, the baseline network explained
with DTD: the rule, the dense layers and the depth (:func:`sepdtd.beyond.factors`), and the first layer's
rule (:func:`first_layer_rows`). How alike the top-1 and top-2 explanations are is read from ``|cos|``
(``abs_cosine``): a DTD heatmap carries the sign of its logit, so the signed cosine falls when a logit
turns negative even where the two patterns stay the same. The signed cosine is shown beside it as
sensitivity, and no verdict rests on it. Where ``|cos|`` was not stored (results of older code), the
similarity is reported as not measured.

Every function returns numbers, table cells or Markdown; none reads files.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from sepdtd import attribution, report

__all__ = ["FACTORS", "TOL", "SIGNED_METHODS", "FIRST_RULES", "FIRST_FIELDS", "FIRST_NETWORKS", "cell",
           "error_removed", "method_table", "dense_table", "depth_table", "factor_table", "range_table",
           "factor_lines", "hypotheses", "first_layer_rows", "first_layer_summary", "first_layer_table",
           "change_table"]

#: The factors of :func:`sepdtd.beyond.factors`, in the order the chapter shows them.
FACTORS = ("rule", "dense", "depth")

#: A change of |cos| smaller than this counts as none (no standard error of the cosine is stored).
TOL = 0.01

#: The methods that keep negative weights (Section 6's rule hypothesis).
SIGNED_METHODS = ("epsilon", "alphabeta", "gradient_x_input")


def _label(dataset: str) -> str:
    return report.DATASET_LABELS.get(dataset, dataset)


def cell(pair: tuple | float | None, digits: int = 2, pct: bool = False) -> str:
    """A table cell: ``mean ± sd`` of a ``(mean, sd)`` pair (or a bare value), a dash where missing."""
    mean, sd = pair if isinstance(pair, tuple) else (pair, None)
    if mean is None:
        return "—"

    def f(v: float) -> str:
        return f"{100 * v:.0f}%" if pct else f"{v:.{digits}f}"

    return f(mean) + (f" ± {f(sd)}" if sd is not None else "")


def _mean(pair: tuple | None) -> float | None:
    return None if pair is None else pair[0]


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _avg(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def error_removed(by: Mapping[tuple, Mapping], dataset: str, factor: Mapping) -> float | None:
    """Share of the baseline's top-2 error on the objects, ``1 - mass_obj2``, that a change removes.

    Parameters
    ----------
    by : mapping
        :func:`sepdtd.beyond.summary` rows keyed by ``(dataset, model, method)``.
    dataset : str
        The data set.
    factor : mapping
        One entry of :func:`sepdtd.beyond.factors` (its ``mass_obj2``).

    Returns
    -------
    float or None
        ``(mass_obj2 - ref) / (1 - ref)``; None where either is missing or the baseline has no error.
    """
    ref = by.get((dataset, "baseline", "dtd"))
    ref = None if ref is None else ref["mass_obj2"][0]
    if ref is None or factor["mass_obj2"] is None or ref >= 1:
        return None
    return (factor["mass_obj2"] - ref) / (1 - ref)


def method_table(by: Mapping[tuple, Mapping], dataset: str, model: str, convention: str
                 ) -> tuple[list[str], list[list[str]]]:
    """Factor 1's table: one network explained by every method (header, body)."""
    body = []
    for method in attribution.METHODS:
        r = by.get((dataset, model, method))
        if r is None:
            continue
        body.append([attribution.LABELS[method], cell(r["diffusion"]), cell(r["abs_cosine"], 3),
                     cell(r["cosine"], 3), cell(r["mass1"]), cell(r["mass2"]), cell(r["mass_obj2"]),
                     cell(r["point1"], pct=True), cell(r["point2"], pct=True)])
    return (["method", f"d [{convention}]", "|cos|", "cos (signed)", "mass top-1", "mass top-2",
             "top-2 on objects", "pointing top-1", "pointing top-2"], body)


def dense_table(rows: Sequence[Mapping], by: Mapping[tuple, Mapping], dataset: str
                ) -> tuple[list[str], list[list[str]]]:
    """Factor 2's table: the baseline, Eq. 6 at λ = 1.0 and separate dense layers, with DTD (header, body)."""
    models_ = ["baseline", "lam1.0"] + sorted({r["model"] for r in rows
                                               if r["dataset"] == dataset and r["family"] == "separate"})
    body = []
    for model in models_:
        r = by.get((dataset, model, "dtd"))
        if r is None:
            continue
        g = by.get((dataset, model, "gradient_x_input"), {})
        label = {"baseline": "Table 1 (baseline)", "lam1.0": "Eq. 6, λ = 1.0"}.get(
            model, f"separate dense layers ({model.split('-', 1)[-1]} width)")
        train = cell(r["train_wall_s"], 0) + " s" if r["train_wall_s"][0] is not None else "—"
        body.append([label, f"{r['params']:,}", train, cell(r["accuracy"], 3), cell(r["diffusion"]),
                     cell(r["abs_cosine"], 3), cell(r["mass2"]), cell(r["point2"], pct=True),
                     cell(g.get("abs_cosine", (None, None)), 3), cell(g.get("mass2", (None, None)))])
    return (["network", "parameters", "training", "accuracy", "DTD d", "DTD |cos|", "DTD mass top-2",
             "DTD pointing top-2", "g×i |cos|", "g×i mass top-2"], body)


def depth_table(rows: Sequence[Mapping], by: Mapping[tuple, Mapping], dataset: str, table1_conv: int
                ) -> tuple[list[str], list[list[str]]]:
    """Factor 3's table: the networks of each depth, with DTD and LRP-ε (header, body)."""
    depth = {r["n_conv"]: r["model"] for r in rows if r["dataset"] == dataset and r["family"] == "depth"}
    depth[table1_conv] = "baseline"
    body = []
    for n in sorted(depth):
        r = by.get((dataset, depth[n], "dtd"))
        if r is None:
            continue
        e = by.get((dataset, depth[n], "epsilon"), {})
        body.append([f"{n}" + (" (Table 1)" if n == table1_conv else ""), f"{r['params']:,}",
                     cell(r["accuracy"], 3), cell(r["diffusion"]), cell(r["abs_cosine"], 3), cell(r["mass2"]),
                     cell(r["point2"], pct=True), cell(e.get("abs_cosine", (None, None)), 3),
                     cell(e.get("mass2", (None, None)))])
    return (["conv layers", "parameters", "accuracy", "DTD d", "DTD |cos|", "DTD mass top-2",
             "DTD pointing top-2", "LRP-ε |cos|", "LRP-ε mass top-2"], body)


def factor_table(factors: Sequence[Mapping], by: Mapping[tuple, Mapping], dataset: str
                 ) -> tuple[list[str], list[list[str]]]:
    """Every change of one data set against the paper's setting, as variant − reference (header, body)."""
    body = [[f["factor"], f["change"], report.or_dash(f["d_abs_cosine"], "+.3f"),
             report.or_dash(f["d_cosine"], "+.3f"), report.or_dash(f["d_diffusion"], "+.2f"),
             report.or_dash(f["d_mass2"], "+.2f"), report.or_dash(f["d_mass_obj2"], "+.2f"),
             report.or_dash(f["d_point2"], "+.2f"), report.or_dash(error_removed(by, dataset, f), "+.0%")]
            for f in factors if f["dataset"] == dataset]
    return (["factor", "change", "Δ |cos|", "Δ cos (signed)", "Δ d", "Δ mass top-2", "Δ on objects",
             "Δ pointing top-2", "top-2 error removed"], body)


def _span(values: Sequence[float | None], spec: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    lo, hi = format(min(vals), spec), format(max(vals), spec)
    return lo if lo == hi else f"{lo} to {hi}"


def range_table(factors: Sequence[Mapping], by: Mapping[tuple, Mapping], datasets: Sequence[str]
                ) -> tuple[list[str], list[list[str]]]:
    """Per factor and data set, the range over its changes of Δ|cos| and of the top-2 error removed."""
    body = []
    for factor in FACTORS:
        line = [factor]
        for name in datasets:
            fs = [f for f in factors if f["dataset"] == name and f["factor"] == factor]
            line.append("—" if not fs else
                        f"Δ|cos| {_span([f['d_abs_cosine'] for f in fs], '+.2f')}; error removed "
                        f"{_span([error_removed(by, name, f) for f in fs], '+.0%')}")
        body.append(line)
    return ["factor"] + [_label(d) for d in datasets], body


def _best(items: Sequence[Mapping], key: str, sign: int = 1) -> Mapping | None:
    items = [f for f in items if f[key] is not None]
    return max(items, key=lambda f: sign * f[key]) if items else None


def factor_lines(factors: Sequence[Mapping], by: Mapping[tuple, Mapping],
                 blanks: Mapping[tuple, tuple], datasets: Sequence[str]) -> str:
    """Per data set and factor: the change that lowers |cos| most, and the one that helps the ground truth most.

    Parameters
    ----------
    factors : sequence of mapping
        :func:`sepdtd.beyond.factors` of the rows in ``by``.
    by : mapping
        :func:`sepdtd.beyond.summary` rows keyed by ``(dataset, model, method)``.
    blanks : mapping
        :func:`sepdtd.book.blank_shares` of the same results: on how many composites a gain rests.
    datasets : sequence of str
        The data sets, in order.

    Returns
    -------
    str
        Markdown, one paragraph per data set.
    """
    out = []
    for name in datasets:
        ref = by.get((name, "baseline", "dtd"))
        if ref is None:
            continue
        fs = [f for f in factors if f["dataset"] == name]
        vals = [report.or_dash(v, spec) for v, spec in ((_mean(ref.get("abs_cosine")), ".3f"),
                (ref["mass2"][0], ".2f"), (ref["mass_obj2"][0], ".2f"), (ref["point2"][0], ".0%"))]
        lines = [f"**{_label(name)}**, the paper's setting: |cos| {vals[0]}, top-2 mass {vals[1]}, on objects "
                 f"{vals[2]}, top-2 pointing {vals[3]}."]
        for factor in FACTORS:
            group = [f for f in fs if f["factor"] == factor]
            if not group:
                lines.append(f"- *{factor}*: not measured at this profile.")
                continue
            said = []
            c = _best(group, "d_abs_cosine", -1)
            if c is None:
                said.append("|cos| was not measured")
            elif c["d_abs_cosine"] < -TOL:
                said.append(f"the largest drop of |cos| is {c['change']} ({c['d_abs_cosine']:+.3f})")
            else:
                said.append(f"no change lowers |cos| by more than {TOL} (the most: {c['change']}, "
                            f"{c['d_abs_cosine']:+.3f})")
            m = _best(group, "d_mass_obj2")
            if m is not None and m["d_mass_obj2"] > 0:
                b2 = blanks.get((name, m["model"], m["method"]), (None, None))[1]
                few = (f"; only on the {1 - b2:.0%} of the composites whose top-2 heatmap is not blank"
                       if b2 is not None and b2 > 0.5 else "")
                fell = (f"; but its top-2 pointing game falls by {-m['d_point2']:.2f}"
                        if m["d_point2"] is not None and m["d_point2"] < -0.05 else "")
                said.append(f"the largest gain on the ground truth is {m['change']} (top-2 on objects "
                            f"{m['d_mass_obj2']:+.3f}, {report.or_dash(error_removed(by, name, m), '+.0%')} of the "
                            f"top-2 error{few}{fell})")
            elif m is not None:
                said.append(f"no change moves the top-2 explanation onto its object (the smallest loss: "
                            f"{m['change']}, {m['d_mass_obj2']:+.3f})")
            lines.append(f"- *{factor}*: " + "; ".join(said) + ".")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _rule(names: Sequence[str], by: Mapping[tuple, Mapping], ref: Mapping[str, Mapping]) -> str | None:
    rule = {}
    for n in names:
        signed = [by[(n, "baseline", m)] for m in SIGNED_METHODS if (n, "baseline", m) in by]
        if signed:
            rule[n] = (_avg([_diff(_mean(r.get("abs_cosine")), _mean(ref[n].get("abs_cosine"))) for r in signed]),
                       _avg([_diff(r["mass_obj2"][0], ref[n]["mass_obj2"][0]) for r in signed]))
    if not rule:
        return None
    sim = [v[0] for v in rule.values()]
    gt = [v[1] for v in rule.values() if v[1] is not None]
    text = ("**Section 6's rule hypothesis** (positive weights only): a rule that keeps negative weights "
            "(LRP-ε, LRP-α2β1, gradient × input; mean of the three) instead of $z^+$ changes the baseline's "
            "top-2 |cos| by " + ", ".join(f"{report.or_dash(v[0], '+.3f')} ({_label(n)})" for n, v in rule.items())
            + " and the top-2 mass on the objects by "
            + ", ".join(report.or_dash(v[1], "+.3f") for v in rule.values()) + ". ")
    if any(s is None for s in sim):
        return text + "|cos| was not measured on these results, so the similarity part of the hypothesis is open."
    if all(s < -0.1 for s in sim) and gt and all(g > 0 for g in gt):
        return text + ("It holds: keeping negative weights makes the two explanations far less alike and moves "
                       "the second one towards its object.")
    if all(s < -TOL for s in sim):
        right = ("" if gt and all(g > 0 for g in gt) else
                 ", but not everywhere for their correctness" if gt else "; the ground truth was not measured")
        return text + f"It holds for the similarity of the explanations{right}."
    return text + "It does not hold everywhere even for the similarity of the explanations."


def _dense(names: Sequence[str], rows: Sequence[Mapping], by: Mapping[tuple, Mapping], ref: Mapping[str, Mapping],
           blanks: Mapping[tuple, tuple]) -> str | None:
    parts = []
    fam: dict[str, list[tuple]] = {"The fine-tuning with Eq. 6 (λ = 1.0)": [], "Separate dense layers": []}
    for n in names:
        models_ = ["lam1.0"] + [r["model"] for r in rows
                                if r["dataset"] == n and r["family"] == "separate" and r["method"] == "dtd"]
        for model in models_:
            r = by.get((n, model, "dtd"))
            if r is None:
                continue
            ds = _diff(_mean(r.get("abs_cosine")), _mean(ref[n].get("abs_cosine")))
            dm = _diff(r["mass_obj2"][0], ref[n]["mass_obj2"][0])
            dp = _diff(r["point2"][0], ref[n]["point2"][0])
            b2 = blanks.get((n, model, "dtd"), (None, None))[1]
            fam["The fine-tuning with Eq. 6 (λ = 1.0)" if model == "lam1.0" else "Separate dense layers"].append(
                (ds, dm, b2))
            parts.append(f"{_label(n)} {'λ = 1.0' if model == 'lam1.0' else model}: |cos| "
                         f"{report.or_dash(ds, '+.3f')}, on objects {report.or_dash(dm, '+.3f')}, top-2 pointing "
                         f"{report.or_dash(dp, '+.2f')}, top-2 heatmap blank on {report.or_dash(b2, '.0%')} of "
                         "the composites")
    if not parts:
        return None
    verdicts = []
    for label, vals in fam.items():
        if not vals:
            continue
        measured = [s for s, _, _ in vals if s is not None]
        said = (f"{label}: |cos| falls by more than 0.05 in {sum(s < -0.05 for s in measured)} of {len(measured)} "
                "cases" if measured else f"{label}: |cos| was not measured")
        blank = [b for _, _, b in vals if b is not None and b > 0.5]
        if blank:
            said += (f"; in {len(blank)} of them the sign-corrected top-2 heatmap holds no positive relevance on "
                     f"most scored composites ({', '.join(f'{b:.0%}' for b in blank)}), so its mass accuracy "
                     "covers only the other composites")
        seen = [dm for _, dm, b in vals if dm is not None and not (b is not None and b > 0.5)]
        if seen:
            wrong = sum(dm < -0.02 for dm in seen)
            said += (f"; the top-2 explanation moves onto its object (by more than 0.02) in "
                     f"{sum(dm > 0.02 for dm in seen)} of the {len(seen)} " + ("others" if blank else "cases")
                     + (f", off it in {wrong}" if wrong else ""))
        both = (len(measured) == len(vals) and all(s < -0.05 for s in measured)
                and len(seen) == len(vals) and all(dm > 0.02 for dm in seen))
        verdicts.append(said + (": the hypothesis holds for them on both counts." if both else "."))
    return ("**Sections 3-4's dense-layer hypothesis** (overshadowing in the dense layers): against the baseline, "
            + "; ".join(parts) + ". " + " ".join(verdicts))


def _depth(names: Sequence[str], rows: Sequence[Mapping], ref: Mapping[str, Mapping], table1_conv: Mapping[str, int]
           ) -> str | None:
    depth = {}
    for n in names:
        base = _mean(ref[n].get("abs_cosine"))
        d_rows = [r for r in rows if r["dataset"] == n and r["family"] == "depth" and r["method"] == "dtd"]
        if d_rows:
            ch = [(r["n_conv"], _diff(_mean(r.get("abs_cosine")), base)) for r in d_rows]
            depth[n] = ([v for k, v in ch if k < table1_conv[n]], [v for k, v in ch if k > table1_conv[n]])
    if not depth:
        return None
    if any(v is None for pair in depth.values() for side in pair for v in side):
        return "**Depth**: |cos| was not measured on these results, so the depth hypothesis is open."

    def listing(k: int) -> str:
        return ", ".join(f"{_avg(v[k]):+.3f} ({_label(n)})" for n, v in depth.items() if v[k]) or "— (none run)"

    def direction(values: list[float], expected: int) -> str:
        if not values:
            return "not run"
        if all(expected * v > TOL for v in values):
            return "as expected of $z^+$"
        if all(-expected * v > TOL for v in values):
            return "the opposite of what $z^+$ would lead us to expect"
        return "not consistently in either direction"

    deeper = [_avg(v[1]) for v in depth.values() if v[1]]
    shallower = [_avg(v[0]) for v in depth.values() if v[0]]
    return (f"**Depth**: fewer convolutions change the DTD |cos| by {listing(0)}; more convolutions by "
            f"{listing(1)} (means over the depths run). Deeper trunks: {direction(deeper, +1)}; shallower trunks: "
            f"{direction(shallower, -1)}. Changes below {TOL} count as none: no standard error is stored.")


def _contrastive(names: Sequence[str], by: Mapping[tuple, Mapping], ref: Mapping[str, Mapping]) -> str | None:
    gains = {n: _avg([_diff(by[(n, "baseline", m)]["mass_obj2"][0], ref[n]["mass_obj2"][0])
                      for m in ("clrp", "sglrp") if (n, "baseline", m) in by]) for n in names}
    gains = {n: g for n, g in gains.items() if g is not None}
    if not gains:
        return None
    return ("**Explaining $f_c$ alone**: the contrastive methods keep DTD's positive-weight propagation; they change "
            "the top-2 mass on the objects by " + ", ".join(f"{g:+.3f} ({_label(n)})" for n, g in gains.items())
            + " (mean of CLRP and SGLRP). "
            + ("So part of what Section 6 attributes to the positive weights is that DTD explains each logit on its "
               "own, without subtracting what the competing class shares with it."
               if all(g > 0.02 for g in gains.values()) else
               "Subtracting the competing classes does not consistently help."))


def hypotheses(rows: Sequence[Mapping], blanks: Mapping[tuple, tuple], datasets: Sequence[str],
               table1_conv: Mapping[str, int], *, first_layer: tuple[dict, bool] | None = None) -> str:
    """The paper's hypotheses, and the contrastive and depth findings, as computed sentences.

    Parameters
    ----------
    rows : sequence of mapping
        :func:`sepdtd.beyond.summary` rows.
    blanks : mapping
        :func:`sepdtd.book.blank_shares` of the same results.
    datasets : sequence of str
        The data sets, in order.
    table1_conv : mapping
        Each data set's number of convolutions in Table 1 (:data:`sepdtd.models.TABLE1_CONV`).
    first_layer : (dict, bool), optional
        ``(change of |cos| per data set, whether the first layer's rule moves it less than the fine-tuning)``
        from :func:`first_layer_summary`, where it was measured.

    Returns
    -------
    str
        Markdown, one paragraph per hypothesis that the rows can answer.
    """
    by = {(r["dataset"], r["model"], r["method"]): r for r in rows}
    names = [n for n in datasets if (n, "baseline", "dtd") in by]
    ref = {n: by[(n, "baseline", "dtd")] for n in names}
    text = [_rule(names, by, ref), _dense(names, rows, by, ref, blanks), _depth(names, rows, ref, table1_conv),
            _contrastive(names, by, ref)]
    if first_layer is not None:
        change, small = first_layer
        text.append("**The first layer's rule** ($z^B$ against $z^+$, Factor 5): the baseline's top-2 |cos| changes "
                    f"by at most {max(abs(v) for v in change.values()):.4f}. "
                    + ("The diffusion does not come from the first layer: its rule changes where the relevance lies, "
                       "not how alike the two classes' explanations are." if small else
                       "On some data sets the first layer's rule moves |cos| as much as the fine-tuning does."))
    return "\n\n".join(t for t in text if t)


#: The first layers' rules of Factor 5 (label -> method of :data:`sepdtd.attribution.METHODS`); every layer
#: above the first uses $z^+$ in both.
FIRST_RULES: dict[str, str] = {"$z^B$ (Eq. 4, the paper's)": "dtd", "$z^+$ (Eq. 3)": "zplus"}

#: The fields of :func:`first_layer_rows`, in order.
FIRST_FIELDS = ("d", "abs_cosine", "cosine", "mass2", "mass_obj2", "point2")

#: The networks of Factor 5: the baseline and the fine-tune at λ = 1.0.
FIRST_NETWORKS = {"baseline": 0.0, "lam1.0": 1.0}


def first_layer_rows(by: Mapping[tuple, Mapping], datasets: Sequence[str]
                     ) -> dict[tuple[str, float], dict[str, dict[str, float | None]]]:
    """Factor 5: the baseline and λ = 1.0 explained with each first-layer rule of :data:`FIRST_RULES`.

    Parameters
    ----------
    by : mapping
        :func:`sepdtd.beyond.summary` rows keyed by ``(dataset, model, method)``.
    datasets : sequence of str
        The data sets, in order.

    Returns
    -------
    dict
        ``(dataset, λ)`` -> rule label -> ``d`` (Eq. 7 under the rows' convention), ``abs_cosine``, ``cosine``
        (real test images) and the top-2 class's ``mass2``, ``mass_obj2`` and ``point2`` on the composites
        (sign-corrected, as the measurement stores them), means over seeds. Only the data sets with both
        networks measured under both rules.
    """
    out = {}
    for name in datasets:
        if not all((name, model, m) in by for model in FIRST_NETWORKS for m in FIRST_RULES.values()):
            continue
        for model, lam in FIRST_NETWORKS.items():
            out[name, lam] = {rule: {k: by[(name, model, m)]["diffusion" if k == "d" else k][0] for k in FIRST_FIELDS}
                              for rule, m in FIRST_RULES.items()}
    return out


def first_layer_summary(measured: Mapping[tuple[str, float], Mapping[str, Mapping]], datasets: Sequence[str]
                        ) -> tuple[str, dict[str, float], bool]:
    """What Factor 5 shows: does the first layer's rule move |cos| less than the fine-tuning does?

    Parameters
    ----------
    measured : mapping
        :func:`first_layer_rows`.
    datasets : sequence of str
        The data sets, in order; those missing from ``measured`` are left out.

    Returns
    -------
    (str, dict, bool)
        The sentences; the change of the baseline's |cos| from $z^B$ to $z^+$ per data set; whether that
        change is below :data:`TOL` or smaller than the fine-tuning's on every data set.
    """
    zb, zp = FIRST_RULES
    datasets = [n for n in datasets if (n, 0.0) in measured and (n, 1.0) in measured]
    if not datasets:
        return "The first layer's rule was not measured on these networks.", {}, False

    def get(name: str, lam: float, rule: str, key: str) -> float | None:
        return measured[name, lam][rule][key]

    rule_change = {n: _diff(get(n, 0.0, zp, "abs_cosine"), get(n, 0.0, zb, "abs_cosine")) for n in datasets}
    lam_change = {(n, r): _diff(get(n, 1.0, r, "abs_cosine"), get(n, 0.0, r, "abs_cosine"))
                  for n in datasets for r in (zb, zp)}
    if any(v is None for v in (*rule_change.values(), *lam_change.values())):
        return "|cos| is undefined on every image of some network here.", {}, False
    moves = [n for n in datasets if abs(rule_change[n]) >= max(TOL, abs(lam_change[n, zb]))]
    small = not moves
    text = (f"Replacing $z^B$ by $z^+$ at the first layer changes the baseline's top-2 |cos| by at most "
            f"{max(abs(v) for v in rule_change.values()):.4f} on any data set. ")
    text += (f"On every data set the first layer's rule moves |cos| by less than {TOL} or less than the fine-tuning "
             "does: the similarity of the two explanations is made above the first layer. " if small else
             "On " + ", ".join(_label(n) for n in moves) + f" the first layer's rule moves |cos| by {TOL} or more, "
             "and at least as much as the fine-tuning does. ")
    text += ("What the rule changes is where the relevance lies: $z^+$ gives black pixels none. The table's "
             "mass columns show by how much.")
    return text, rule_change, small


def change_table(measured: Mapping[tuple[str, float], Mapping[str, Mapping]], datasets: Sequence[str]
                 ) -> tuple[list[str], list[list[str]]]:
    """Factor 5's second table: the change of |cos| by the fine-tuning under each rule, and by the rule."""
    zb, zp = FIRST_RULES
    body = []
    for n in (n for n in datasets if (n, 0.0) in measured and (n, 1.0) in measured):
        def ch(a: tuple, b: tuple, key: str = "abs_cosine") -> str:
            return report.or_dash(_diff(measured[b[0], b[1]][b[2]][key], measured[a[0], a[1]][a[2]][key]), "+.3f")
        body.append([_label(n), ch((n, 0.0, zb), (n, 1.0, zb)), ch((n, 0.0, zp), (n, 1.0, zp)),
                     ch((n, 0.0, zb), (n, 0.0, zp)), ch((n, 0.0, zb), (n, 0.0, zp), "mass2"),
                     ch((n, 0.0, zb), (n, 0.0, zp), "mass_obj2")])
    return (["data set", "Δ|cos| by λ = 1.0, $z^B$", "Δ|cos| by λ = 1.0, $z^+$", "Δ|cos| by the rule (baseline)",
             "Δ mass top-2 by the rule", "Δ on objects by the rule"], body)


def first_layer_table(measured: Mapping[tuple[str, float], Mapping[str, Mapping]], convention: str
                      ) -> tuple[list[str], list[list[str]]]:
    """Factor 5's table: every (data set, network, rule) of :func:`first_layer_rows` (header, body)."""
    specs = (".2f", ".3f", ".3f", ".2f", ".2f", ".0%")
    body = [[_label(name), "Baseline" if lam == 0 else f"λ = {lam:.1f}", rule]
            + [report.or_dash(v[k], s) for k, s in zip(FIRST_FIELDS, specs)]
            for (name, lam), per in measured.items() for rule, v in per.items()]
    return (["data set", "network", "first-layer rule", f"d [{convention}]", "|cos|", "cos (signed)", "mass top-2",
             "top-2 on objects", "pointing top-2"], body)

