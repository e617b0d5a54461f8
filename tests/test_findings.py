"""The chapters' generated findings (sepdtd.findings) say what the rows say, whatever the numbers."""
from __future__ import annotations

from test_report import LAMS, flat, result

from sepdtd import book, findings, report


def three_seeds(acc_shift=(0.0, 0.0, 0.0), d_step=0.1):
    base_acc = (0.985, 0.975, 0.99)
    return [result("mnist", k, d={0.0: 0.5, **{lam: 0.5 + d_step + 0.01 * k for lam in LAMS[1:]}},
                   acc={0.0: base_acc[k], **{lam: base_acc[k] + acc_shift[k] for lam in LAMS[1:]}},
                   t=(0.0, 1.0)) for k in range(3)]


def with_signs(res, base=(0.0, 0.2), tuned=(0.9, 1.0), cos=(0.99, 0.4)):
    for r in res:
        for s in r["settings"]:
            s["logit_nonpositive"] = list(base if s["lam"] == 0 else tuned)
            s["abs_cosine"] = cos[0] if s["lam"] == 0 else cos[1]
    return res


def test_join():
    assert findings.join([]) == "" and findings.join(["a"]) == "a"
    assert findings.join(["a", "b"]) == "a and b" and findings.join(["a", "b", "c"]) == "a, b and c"


def test_the_tables_finding_follows_the_verdicts():
    text = findings.tables(report.rows(three_seeds()))
    assert "*d rises* is held for MNIST" in text and "*Accuracy within 0.01* is held for MNIST" in text
    assert "seeds 0, 1 and 2" in text and "Open means" not in text
    text = findings.tables(report.rows(three_seeds(acc_shift=(-0.03, 0.02, 0.0))))
    assert "*Accuracy within 0.01* is inconclusive for MNIST" in text
    text = findings.tables(report.rows(three_seeds()[:1]))
    assert "is open for MNIST" in text and "Open means one seed" in text and "(seed 0," in text
    assert findings.tables([]) == "No fine-tuned results to judge."


def test_the_sign_finding_reads_the_stored_shares_or_says_they_are_missing():
    text = findings.signs(report.rows(with_signs(three_seeds())))
    assert "top-2 logit is ≤ 0 on 100% of the test images, and the top-1 logit on 90%" in text
    assert "For the baselines the top-2 share is 20%." in text
    assert "predate the sign fields" in findings.signs(report.rows(three_seeds()))


def test_the_diffusion_finding_names_the_data_sets_that_are_one_pattern():
    rows = report.rows(with_signs(three_seeds()))
    assert findings.diffusion(rows).startswith("The baselines' top-1 and top-2 heatmaps are one pattern up to sign, "
                                               "as the paper says. Their mean |cos| is 0.990 for MNIST")
    rows = report.rows(with_signs(three_seeds(), cos=(0.5, 0.4)))
    assert "are not one pattern" in findings.diffusion(rows)
    assert "lack |cos|" in findings.diffusion(report.rows(three_seeds()))


def test_the_baseline_finding_gives_the_accuracy_and_the_verdict():
    res = [result("cifar10", 0, d=flat(0.1), acc=flat(0.75), t=(0.0, 1.0)),
           result("mnist", 0, d=flat(0.1), acc=flat(0.99), t=(0.0, 1.0))]
    text = findings.baselines(report.rows(res))
    assert "0.7500 for CIFAR-10 and 0.9900 for MNIST" in text
    assert "held for MNIST; not held for CIFAR-10" in text


def test_the_penalty_and_weights_findings_read_the_in_block_shares():
    rows = report.rows(three_seeds())        # inblock [0.1 + λ/10, 0.2] per network
    assert findings.penalty(rows) == ("Fine-tuning moves the share of positive dense weight inside the class blocks "
                                      "from 0.15 to 0.16–0.40, over every λ and data set shown.")
    assert findings.weights(rows, "mnist") == ("For MNIST, the share of positive dense weight inside the class "
                                               "blocks is 0.15 for the baseline and 0.20 at λ = 1 (seeds 0, 1 "
                                               "and 2).")
    assert findings.weights(rows, "cifar10").startswith("No CIFAR-10 results")


def test_the_heatmap_finding_says_the_second_heatmap_is_negated():
    text = findings.heatmaps(report.rows(with_signs(three_seeds())))
    assert text.startswith("At λ = 1, the top-2 logit is ≤ 0 on 100% of the test images")
    assert "|cos| goes from 0.99 to 0.40 for MNIST" in text
    assert "lack the sign fields" in findings.heatmaps(report.rows(three_seeds()))


def test_the_ground_truth_finding_reads_dtd_on_the_lambda_family():
    rows = [{"dataset": "mnist", "method": "dtd", "family": "lambda", "lam": 0.0, "point2": (0.1, None), "n_seeds": 1},
            {"dataset": "mnist", "method": "dtd", "family": "lambda", "lam": 1.0, "point2": (0.6, None), "n_seeds": 1},
            {"dataset": "mnist", "method": "sglrp", "family": "lambda", "lam": 1.0, "point2": (0.9, None),
             "n_seeds": 1}]
    text = findings.ground_truth(rows)
    assert "in 10% of the composites where it is defined for the baselines, and in 60% at λ = 1" in text
    assert "MNIST, with one seed each." in text
    assert findings.ground_truth(rows[2:]) == "No ground-truth results for DTD."


def _abl(tag, top2, abs_cos, seed=0, centred=1.0, dataset="mnist"):
    return {"dataset": dataset, "tag": tag, "seed": seed, "logit_nonpositive": [0.0, top2], "abs_cosine": abs_cos,
            "centered_logit_nonpositive": [0.0, centred]}


def test_the_causes_finding_names_what_holds_the_logits_down_and_whether_separation_survives():
    rows = [_abl("baseline", 0.25, 0.99), _abl("lam1.0", 1.0, 0.83),
            _abl("abl-free-output-bias", 0.3, 0.85), _abl("abl-output-penalty", 0.9, 0.95)]
    text = findings.causes(rows)
    assert text.startswith("At λ = 1 the top-2 logit is ≤ 0 on 100% of the test images (baseline: 25%). With the "
                           "output bias free, it is ≤ 0 on 30%; with the penalty on the output layer alone, on 90%; "
                           "with the logits centred before DTD, on 100%.")
    assert "The constraint b ≤ 0 on the output bias holds the logits down." in text
    assert "the separation survives" in text and text.endswith(" MNIST: seed 0 only (n = 1).")
    rows[2] = _abl("abl-free-output-bias", 0.3, 0.97)                   # lifted, and |cos| back near 0.99
    assert "the separation rested on the negative logits" in findings.causes(rows)
    rows[2] = _abl("abl-free-output-bias", 0.9, 0.85)                   # nothing lifts them
    text = findings.causes(rows)
    assert "is not what holds them down" in text and "No change lifts them" in text
    rows[1] = _abl("lam1.0", 1.0, 0.83, centred=0.0)                    # centring lifts them; |cos| is the fine-tune's
    assert "|cos| stays below the baseline's: the separation survives" in findings.causes(rows)
    assert findings.causes(rows[2:]) == "No ablation results."
    other = [_abl("baseline", 0.3, 0.99, dataset="fashion_mnist"), _abl("lam1.0", 0.9, 0.80, dataset="fashion_mnist"),
             _abl("abl-free-output-bias", 0.2, 0.85, dataset="fashion_mnist")]
    text = findings.causes(rows + other)                                 # each data set judged on its own
    assert "on 90%–100% of the test images (baseline: 25%–30%)" in text
    assert "is not what holds them down (MNIST)." in text and "holds the logits down (Fashion-MNIST)." in text
    assert text.endswith(" MNIST and Fashion-MNIST: seed 0 only (n = 1).")


def test_the_causes_finding_names_the_part_of_the_top2_logit_that_moves_most():
    base = {"in_pos": 1.0, "in_neg": -1.0, "off_pos": 8.0, "off_neg": -6.0, "bias": 0.0}
    tuned = {"in_pos": 0.5, "in_neg": -1.0, "off_pos": 0.0, "off_neg": -9.0, "bias": 0.0}
    rows = [_abl("baseline", 0.25, 0.99) | {"top2_parts": base}, _abl("lam1.0", 1.0, 0.83) | {"top2_parts": tuned}]
    assert "Its largest change against the baseline is in the off-block positive part: +8.00 to +0.00." in \
        findings.causes(rows)


def test_the_opening_box_is_a_myst_admonition_with_two_lines():
    box = book.opening("it says so.", "we see it.", note="A note.")
    assert box.startswith("```{admonition} In brief\n:class: tip\n") and box.endswith("\n```")
    assert "**The paper:** it says so.\n\n**We find:** we see it.\n\nA note." in box


def test_the_opening_rows_are_those_of_the_units_the_page_shows(monkeypatch):
    from sepdtd import experiments

    kept = [{**u, "networks_kept": True} for u in three_seeds()]                  # MNIST, seeds 0-2, kept
    legacy = [{**result("cifar10", 0, d={lam: 0.5 for lam in LAMS}, acc={lam: 0.7 for lam in LAMS}, t=(0.0, 1.0)),
               "networks_kept": False}]
    fallback = {"cifar10": 0.61, "fashion_mnist": 0.62}
    monkeypatch.setattr(experiments, "load_results", lambda folder: kept + legacy)
    monkeypatch.setattr(book, "unit_for", lambda profile, name, seed, device: {
        **result(name, seed, d={lam: 0.5 for lam in LAMS}, acc={lam: fallback[name] for lam in LAMS}, t=(0.0, 1.0)),
        "profile": "quick", "fallback": "not kept"})
    rows = book.rows_for("full", 0, "cpu")
    base = {r["dataset"]: r for r in rows if r["lam"] == 0}
    assert base["mnist"]["n_seeds"] == 3
    assert base["cifar10"]["accuracy"] == 0.61 and base["fashion_mnist"]["accuracy"] == 0.62   # not legacy's 0.7


def test_a_claim_whose_field_was_never_measured_is_open_and_says_so():
    table = report.claims_table(report.rows(three_seeds()))       # results without the sign fields
    (row,) = [r for r in table if r["claim"] == "the top-2 heatmap looks like the top-1's"]
    assert (row["verdict"], row["reason"]) == ("open", "not measured for these results")


def test_the_tables_finding_says_when_d_was_not_measured():
    res = three_seeds()
    for r in res:                                # results of the first layout: no sign-corrected d
        for s in r["settings"]:
            s["diffusion"].pop("sc-sum")
    text = findings.tables(report.rows(res))
    assert "*d rises* is not measured for these results (no d[sc-sum])" in text
    assert "*Accuracy within 0.01* is held for MNIST" in text and " is ." not in text


def test_the_tuning_finding_pairs_each_fine_tune_with_its_own_control(monkeypatch):
    from sepdtd import tuning

    def row(lam, acc, lr=1e-4, stale=False):
        return {"dataset": "cifar10", "seed": 0, "name": "paper", "lr": lr, "optimizer": "adam", "batch_size": 64,
                "patience": 3, "max_epochs": None, "baseline_accuracy": 0.8, "lam": lam, "accuracy": acc,
                "stale": stale}

    rows = [row(1.0, 0.80), row(report.CONTROL_LAM, 0.99, lr=1e-5), row(report.CONTROL_LAM, 0.70, stale=True),
            row(report.CONTROL_LAM, 0.85)]
    monkeypatch.setattr(tuning, "summary", lambda results: rows)
    text = findings.tuning([{}])
    assert "λ = 1 ends below a control" in text and "CIFAR-10: 0.050 at seed 0." in text
    rows[-1]["accuracy"] = 0.78
    assert "λ = 1 ends above a control" in findings.tuning([{}])
