"""The report's results, one section per kind of result a run file asks for, in this order:
each a function (spec, stale stage keys, the figures' folder) -> blocks, none where the run has
no such results. A new kind of stage with results adds its section here."""

import json

from ..layout import RANDOM
from ..stages.classify import backbone_replicates, result_path
from .data import differences_table, probe_table, results_table
from .figures import headline_chart
from .stats import format_difference, format_mean_std, paired_difference


def transfer_section(spec, stale, figures) -> list:
    """Detection/segmentation metrics per task and backbone, the paired differences, charts."""
    if not spec.transfer:
        return []
    headers, rows = results_table(spec, stale)
    blocks = [("p", "Detection/segmentation metrics on the test set after fine-tuning, for "
                    "each backbone, as mean ± std over n seeds (one value where n = 1): "
                    f"'{RANDOM}' is a randomly initialised encoder; the others were "
                    "pretrained by the runs below or read from the files named in the run "
                    "file, and converted with tools/convert_to_d2.py. Rows marked "
                    "'published' are numbers from the cited papers, not measured here."),
              ("table", headers, rows)]
    headers, rows = differences_table(spec)
    if rows:
        blocks += [("p", "Each backbone minus the task's baseline, seed by seed (fine-tuning "
                         "seed k of both); 'within noise' when the mean difference is at "
                         "most t standard errors of the mean from zero, t the two-sided 95% "
                         "Student's t of n - 1 degrees of freedom (12.7 for 2 seeds, 2.78 "
                         "for 5: a paired t-test). With one seed the noise is unknown: "
                         "`repeats:` in the run file adds seeds."),
                   ("table", headers, rows)]
    for task in spec.transfer:
        chart = headline_chart(spec, task, figures / f"headline_{task.name}.png")
        if chart:
            blocks.append(("img", chart, f"{task.name}: headline metric per backbone"))
    return blocks


def probe_section(spec, stale, figures) -> list:
    """The frozen encoders' kNN and linear-probe top-1 on the probe's set."""
    if not spec.probe:
        return []
    headers, rows = probe_table(spec, stale)
    return [("p", f"Frozen encoders on {spec.probe.val_root}: weighted kNN top-1 and "
                  f"linear-probe top-1 after the last and at the best of "
                  f"{spec.probe.linear_epochs} epochs ({spec.probe.linear_protocol} "
                  f"protocol, pretrain/eval/linear.py), the probe trained on "
                  f"{spec.probe.train_root}; mean ± std over the pretraining seeds."),
            ("table", headers, rows)]


def classification_values(spec, entry) -> dict:
    """{backbone: {(replicate index, seed): result}} of a classification entry's finished
    stages (replicate k of every backbone pairs with replicate k of the baseline)."""
    found = {}
    for backbone, run in backbone_replicates(spec, entry):
        k = int(run.rsplit("-seed", 1)[1]) if "-seed" in run else 0
        path = result_path(spec, entry, run)
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for one in result.get("repeats", [result]):
            found.setdefault(backbone, {})[(k, one.get("seed", 0))] = one
    return found


def classification_section(spec, stale, figures) -> list:
    """Sets x backbones: the protocol's metric as mean ± std over the replicates and seeds with
    n; InfoCL's test-selected best epoch apart, marked; each backbone paired with the entry's
    baseline replicate by replicate and seed; the published numbers beside."""
    entries = spec.entries.classification if spec.entries else []
    if not entries:
        return []
    rows = []
    for entry in entries:
        found = classification_values(spec, entry)
        names = [b for b in dict.fromkeys(b for b, _ in backbone_replicates(spec, entry))]
        baseline = entry.baseline or names[0]

        def values(backbone, key):
            return {k: r[key] for k, r in found.get(backbone, {}).items()
                    if r.get(key) is not None}
        for backbone in names:
            ours = values(backbone, "metric_value")
            difference = "–"
            if backbone != baseline:
                mean, std, _, verdict = paired_difference(ours, values(baseline, "metric_value"))
                difference = f"{format_difference(mean, std)}; {verdict}" if mean is not None \
                    else "–"
            stale_mark = " (STALE)" if any(k[0] == "classify" and k[1] == entry.name
                                           and k[2].split("-seed")[0] == backbone
                                           for k in stale) else ""
            metric = next(iter(found.get(backbone, {}).values()), {}).get("metric", "top1")
            rows.append([f"{entry.name} ({entry.dataset}, {entry.protocol})",
                         backbone + stale_mark, f"{metric}: {format_mean_std(list(ours.values()))}",
                         format_mean_std(list(values(backbone, "top1_best").values())),
                         str(len(ours)), difference, "measured"])
        for ref in entry.reference:  # (InfoCL's numbers are best test epochs: that column)
            best = ref.metric == "top1_best"
            rows.append([f"{entry.name} ({entry.dataset}, {entry.protocol})",
                         f"{ref.label} (published)",
                         "" if best else f"{ref.metric}: {ref.value:.2f}",
                         f"{ref.value:.2f}" if best else "", "", "", ref.source])
    return [("p", "Frozen encoders on downstream classification sets, each read in its "
                  "official layout (pretrain/eval/sets): the protocol's metric (infocl: top-1 "
                  "after the last of 100 epochs; kornblith: its per-set metric after the L2 "
                  "sweep and refit) as mean ± std over n backbone replicates and probe seeds; "
                  "'best epoch' is InfoCL's own number, the best test epoch, chosen on the test "
                  "set: not a fair estimate, shown because the paper reports it. Differences "
                  "are against the entry's baseline, paired by replicate and seed, with the "
                  "verdict of the detection tables."),
            ("table", ["set", "backbone", "last epoch / metric", "best epoch (test-selected)",
                       "n", "minus the baseline, paired", "source"], rows)]


#: the results sections, in the report's order
SECTIONS = (transfer_section, classification_section, probe_section)
