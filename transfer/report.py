"""The pipeline's report: report.md and a self-contained report.html in the run's folder.

Sections: the results (transfer metrics per backbone as mean ± std over seeds with n and the
test-set size, published numbers beside them, each backbone's paired difference to the baseline
and whether it is within noise, a chart with error bars; the frozen-encoder probe when the run
has one), what ran (per stage: wall time, world size, batch; the run file, versions, commit),
pretraining curves (loss, kNN), the detectors' training curves, and predictions drawn beside the
ground truth.
"""

import base64
import html
import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: Labels come from run files: drawn as written ("$5", "a_b"), never parsed as mathtext
PLAIN_TEXT = {"text.parse_math": False}

from ssl2det.environment import collect_env  # noqa: E402

from .layout import RANDOM  # noqa: E402
from .metrics import headline, read_final_metrics  # noqa: E402
from .spec import replicate_name  # noqa: E402

#: Student's t, two-sided 95%, by degrees of freedom (1..30; 1.96 beyond): a paired difference
#: of n seeds is beyond noise when |mean| > t(n - 1) standard errors (a paired t-test at 5%).
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def t_95(df: int) -> float:
    return T_95[df - 1] if df <= len(T_95) else 1.96


def read_metrics(path: Path) -> list:
    """The JSON lines of a metrics.json (a missing file or a torn last line is skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


@plt.rc_context(PLAIN_TEXT)
def _curve_plot(series: dict, key: str, ylabel: str, title: str, path: Path):
    """One line per run of `key` against iteration; returns the path, or None without data."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    drawn = False
    for name, rows in series.items():
        points = [(r["iteration"], r[key]) for r in rows if key in r and "iteration" in r]
        if points:
            ax.plot(*zip(*points), label=name, marker="o" if len(points) < 10 else None)
            drawn = True
    if drawn:
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    plt.close(fig)
    return path if drawn else None


def _marked(name, key, stale):
    return f"{name} (STALE)" if key in stale else name


def mean_std(values) -> tuple:
    """(mean, sample standard deviation or None for fewer than two values)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_std(values) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def format_difference(mean, std) -> str:
    """A paired difference as "+mean ± std" ("+mean" for one pair, "–" for none)."""
    if mean is None:
        return "–"
    return f"{mean:+.2f}" if std is None else f"{mean:+.2f} ± {std:.2f}"


def paired_difference(ours: dict, baseline: dict) -> tuple:
    """Seed by seed (keys present in both): (mean, std, n, verdict) of ours - baseline. Beyond
    noise means |mean| > t(n - 1) standard errors of the mean difference (T_95)."""
    diffs = [ours[k] - baseline[k] for k in sorted(ours) if k in baseline]
    if not diffs:
        return None, None, 0, "no pair of seeds"
    mean, std = mean_std(diffs)
    if std is None:
        return mean, None, 1, "n = 1: the noise is unknown"
    t = t_95(len(diffs) - 1)
    bound = t * std / math.sqrt(len(diffs))
    within = abs(mean) <= bound
    return mean, std, len(diffs), (f"{'within' if within else 'beyond'} noise (|mean| "
                                   f"{'≤' if within else '>'} {t:g} SE = {bound:.2f})")


def task_metrics(spec, task) -> tuple:
    """({backbone: {seed: {metric: value}}}, {backbone: test images}) of a transfer task's
    evaluations so far."""
    found, sizes = {}, {}
    for backbone in task.backbones:
        for k in range(task.repeats):
            results = read_final_metrics(spec.layout.evaluate(task.name,
                                                              replicate_name(backbone, k)))
            if results:
                found.setdefault(backbone, {})[k] = headline(results)
                sizes[backbone] = results.get("run", {}).get("test_images")
    return found, sizes


def _columns(found) -> list:
    columns = []
    for per_seed in found.values():
        for flat in per_seed.values():
            columns += [c for c in flat if c not in columns]
    return columns


def _stale_mark(task, backbone, stale):
    keys = {("evaluate", task.name, replicate_name(backbone, k)) for k in range(task.repeats)}
    return " (STALE)" if keys & set(stale) else ""


def results_table(spec, stale=()):
    """(headers, rows) of every (task, backbone): each headline metric as mean ± std over the
    seeds, n, the test-set size; then the task's published numbers, labelled as such.
    `stale`: the keys of the stages kept although their inputs changed."""
    tasks, columns = [], []
    for task in spec.transfer:
        found, sizes = task_metrics(spec, task)
        columns += [c for c in _columns(found) if c not in columns]
        tasks.append((task, found, sizes))
    headers = ["task", "backbone", *columns, "n", "test images", "source"]
    rows = []
    for task, found, sizes in tasks:
        for backbone in task.backbones:
            per_seed = found.get(backbone, {})
            rows.append([task.name, spec.label(backbone) + _stale_mark(task, backbone, stale),
                         *(format_mean_std([v[c] for v in per_seed.values() if c in v])
                           for c in columns),
                         str(len(per_seed)), str(sizes.get(backbone) or "–"), "measured"])
        for ref in task.references:
            rows.append([task.name, f"{ref.label} (published)",
                         *(f"{ref.value:.2f}" if c == ref.metric else "" for c in columns),
                         "", "", ref.source])
    return headers, rows


def task_baseline(task) -> str:
    return task.baseline or (RANDOM if RANDOM in task.backbones else task.backbones[0])


def task_metric(task, found) -> str:
    columns = _columns(found)
    return task.metric or (columns[0] if columns else "")


def differences_table(spec):
    """(headers, rows): each backbone against its task's baseline on the task's metric, seed by
    seed, and whether the difference is within noise."""
    rows = []
    for task in spec.transfer:
        found, _ = task_metrics(spec, task)
        metric, baseline = task_metric(task, found), task_baseline(task)
        base = {k: v[metric] for k, v in found.get(baseline, {}).items() if metric in v}
        for backbone in task.backbones:
            if backbone == baseline:
                continue
            ours = {k: v[metric] for k, v in found.get(backbone, {}).items() if metric in v}
            mean, std, n, verdict = paired_difference(ours, base)
            rows.append([task.name, spec.label(backbone), spec.label(baseline), metric,
                         format_difference(mean, std), str(n), verdict])
    return ["task", "backbone", "minus", "metric", "difference (mean ± std over seeds)",
            "pairs", "verdict"], rows


@plt.rc_context(PLAIN_TEXT)
def headline_chart(spec, task, path: Path):
    """The task's metric per backbone: the mean with a ±1 std bar, every seed as a dot, and the
    published numbers as dashed lines; returns the path, or None without results."""
    found, _ = task_metrics(spec, task)
    metric = task_metric(task, found)
    backbones = [b for b in task.backbones if found.get(b)]
    if not metric or not backbones:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for x, backbone in enumerate(backbones):
        values = [v[metric] for v in found[backbone].values() if metric in v]
        mean, std = mean_std(values)
        ax.bar(x, mean, color="#8fb3d9", yerr=std or 0, capsize=6)
        ax.scatter([x] * len(values), values, color="#1f4e79", zorder=3, s=14)
        ax.annotate(f"n={len(values)}", (x, mean), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points")
    for ref in task.references:
        if ref.metric == metric:
            ax.axhline(ref.value, ls="--", color="#b03a2e", lw=1)
            ax.annotate(f"{ref.label} (published)", (len(backbones) - 0.5, ref.value),
                        ha="right", va="bottom", fontsize=8, color="#b03a2e")
    ax.set_xticks(range(len(backbones)), [spec.label(b) for b in backbones], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{task.name}: {metric}, mean ± std over seeds")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def probe_values(spec, name: str) -> dict:
    """{seed: probe result} of a pretraining run's replicates (or of the random encoder)."""
    run = spec.pretrain_run(name)
    found = {}
    for k, replicate in enumerate(run.replicates() if run else [name]):
        path = spec.layout.probe_result(replicate)
        if path.is_file():
            found[k] = json.loads(path.read_text())
    return found


PROBE_COLUMNS = (("knn_top1", "kNN top-1 (%)"), ("linear_top1", "linear top-1, last epoch (%)"),
                 ("linear_top1_best", "linear top-1, best epoch (%)"))


def probe_table(spec, stale=()):
    """(headers, rows) of the kNN and linear-probe top-1 of every probed encoder: mean ± std
    over its seeds, n, and for every run after the first the paired difference of its last-epoch
    linear top-1 to the first run's, with whether it is within noise."""
    names = [r.name for r in spec.pretrain] + ([RANDOM] if spec.probe.baseline else [])
    first = probe_values(spec, names[0]) if names else {}
    rows = []
    for name in names:
        found = probe_values(spec, name)
        cells = [format_mean_std([r[k] for r in found.values() if k in r])
                 for k, _ in PROBE_COLUMNS]
        difference = "–"
        if name != names[0]:
            mean, std, _, verdict = paired_difference(
                {k: r["linear_top1"] for k, r in found.items()},
                {k: r["linear_top1"] for k, r in first.items()})
            if mean is not None:
                difference = f"{format_difference(mean, std)}; {verdict}"
        rows.append([_marked(name, ("probe", name), stale), *cells, str(len(found)),
                     difference])
    return (["run", *(label for _, label in PROBE_COLUMNS), "n",
             f"linear, last epoch: minus {names[0] if names else '–'}, paired by seed"], rows)


def what_ran_table(records):
    """(headers, rows): per stage (label, its record, its folder), its wall time and, for an
    evaluation, the world size and batch its run used (after rescaling to the GPUs at hand)."""
    rows = []
    for label, record, folder in records:
        try:
            seconds = json.loads(Path(record).read_text()).get("seconds")
        except (OSError, ValueError):
            seconds = None
        run = read_final_metrics(folder).get("run", {}) if label.startswith("evaluate") else {}
        rows.append([label, f"{seconds:.0f}" if seconds is not None else "–",
                     str(run.get("world_size", "")), str(run.get("ims_per_batch", "")),
                     str(run.get("images_per_process", ""))])
    return ["stage", "wall time (s)", "world size", "batch", "images per process"], rows


def _pretraining_blocks(spec, runs, pretrain, stale, figures) -> list:
    """The pretraining runs' last loss and kNN, and their curves."""
    blocks, summary = [("h2", "Pretraining")], []
    for name, config in runs.items():
        rows_ = pretrain[name]
        last = rows_[-1] if rows_ else {}
        knn = [r["knn_top1"] for r in rows_ if "knn_top1" in r]
        summary.append([_marked(name, ("pretrain", name), stale), Path(config).name,
                        str(last.get("iteration", "–")),
                        f"{last['loss']:.4f}" if "loss" in last else "–",
                        f"{knn[-1]:.2f}" if knn else "–"])
    blocks.append(("table", ["run", "config", "last iteration", "last loss", "kNN top-1"],
                   summary))
    for key, label, name, why in (
            ("loss", "loss (sum of terms)", "pretrain_loss.png", "no run has logged one yet"),
            ("knn_top1", "kNN top-1 (%)", "pretrain_knn.png", "the kNN monitor needs DATA.VAL_ROOT")):
        plot = _curve_plot(pretrain, key, label, f"pretraining: {label}", figures / name)
        blocks.append(("img", plot, label) if plot else ("p", f"No {label} recorded: {why}."))
    return blocks


def _blocks(spec, stale, records):
    layout = spec.layout
    figures = layout.report_files(spec.report_name)
    figures.mkdir(exist_ok=True)
    blocks = [("h1", f"Pipeline report: {layout.root.name}")]
    if stale:
        blocks.append(("p", "STALE: the inputs of these stages changed after they ran, and they "
                            "were kept (--keep-stale), so their rows below do not come from the "
                            "run file shown: " + ", ".join(" ".join(k) for k in stale)
                       + ". Run without --keep-stale to redo them."))
    blocks.append(("h2", "Results"))
    if not spec.transfer and not spec.probe:
        blocks.append(("p", "This run has no transfer task and no probe: its results are the "
                            "pretraining runs below."))
    if spec.transfer:
        headers, rows = results_table(spec, stale)
        blocks += [("p", "Detection/segmentation metrics on the test set after fine-tuning, for "
                         f"each backbone, as mean ± std over n seeds (one value where n = 1): "
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
    if spec.probe:
        headers, rows = probe_table(spec, stale)
        blocks += [("p", f"Frozen encoders on {spec.probe.val_root}: weighted kNN top-1 and "
                         f"linear-probe top-1 after the last and at the best of "
                         f"{spec.probe.linear_epochs} epochs ({spec.probe.linear_protocol} "
                         f"protocol, pretrain/eval/linear.py), the probe trained on "
                         f"{spec.probe.train_root}; mean ± std over the pretraining seeds."),
                   ("table", headers, rows)]

    blocks += [("h2", "What ran"), ("p", "The run file:"), ("code", spec.source)]
    if records:
        headers, rows = what_ran_table(records)
        blocks += [("p", "Each stage's wall time; for evaluations the world size and batch "
                         "their fine-tuning config had after rescaling to the GPUs at hand (the "
                         "effective config of every stage is in its stage.json)."),
                   ("table", headers, rows)]
    blocks += [("p", "Software, machine and commit:"),
               ("table", ["", "version"], [list(r) for r in collect_env()])]

    runs = {name: r.config for r in spec.pretrain for name in r.replicates()}
    pretrain = {name: read_metrics(layout.pretrain(name) / "metrics.json") for name in runs}
    if runs:
        blocks += _pretraining_blocks(spec, runs, pretrain, stale, figures)
    if not spec.transfer:
        return blocks
    blocks.append(("h2", "Fine-tuning"))
    for task in spec.transfer:
        series = {replicate_name(b, k): read_metrics(
            layout.finetune(task.name, replicate_name(b, k)) / "metrics.json")
            for b in task.backbones for k in range(task.repeats)}
        plot = _curve_plot(series, "total_loss", "total loss", f"{task.name}: training loss",
                           figures / f"finetune_{task.name}.png")
        blocks.append(("img", plot, f"{task.name}: detector training loss") if plot else
                      ("p", f"{task.name}: no training metrics found."))

    blocks.append(("h2", "Predictions"))
    blocks.append(("p", "Each image: the ground truth (left) beside the predictions with score "
                        "≥ 0.3 (right), for the first seed of every backbone."))
    for task in spec.transfer:
        for backbone in task.backbones:
            images = sorted((layout.evaluate(task.name, backbone) / "predictions").glob("*.png"))
            if images:
                blocks.append(("images", images, f"{task.name}, fine-tuned from "
                                                 f"{spec.label(backbone)}"))
    return blocks


def _markdown(blocks, root: Path) -> str:
    lines = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "code":
            lines += ["```yaml", block[1].rstrip(), "```", ""]
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1].relative_to(root)})", ""]
        elif kind == "images":
            lines += [f"**{block[2]}**", ""]
            lines += [" ".join(f"![{p.stem}]({p.relative_to(root)})" for p in block[1]), ""]
    return "\n".join(lines)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html(blocks) -> str:
    parts = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "code":
            parts.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
                           + "</tr>" for row in block[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            parts.append(f'<figure><img src="{_data_uri(block[1])}" alt="{html.escape(block[2])}">'
                         f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
        elif kind == "images":
            imgs = "".join(f'<img src="{_data_uri(p)}" alt="{html.escape(p.stem)}" '
                           'style="max-width:32%">' for p in block[1])
            parts.append(f"<figure>{imgs}<figcaption>{html.escape(block[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;"
             "padding:.25rem .6rem;text-align:left}pre{background:#f6f6f6;padding:1rem;"
             "overflow:auto}img{max-width:100%}figure{margin:1rem 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>pipeline report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(spec, stale=(), records=()) -> Path:
    """Write report.md and report.html (images embedded) into the run folder; print the
    results tables; return the path of report.md. `stale`: keys of stages kept out of date;
    `records`: (label, record file, folder) of every stage, for "what ran"."""
    blocks = _blocks(spec, stale, records)
    out, report = spec.layout.root, spec.layout.report(spec.report_name)
    report.write_text(_markdown(blocks, out))
    report.with_suffix(".html").write_text(_html(blocks))
    results = blocks[blocks.index(("h2", "Results")):blocks.index(("h2", "What ran"))]
    print("\n" + _markdown([block for block in results if block[0] == "table"], out))
    return report
