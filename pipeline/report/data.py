"""The report's data: what the stages wrote, read back as tables (results over seeds, paired
differences, probes, what ran)."""

import json
from pathlib import Path

from ..layout import RANDOM
from transfer.metrics import headline, read_final_metrics
from ..spec import replicate_name
from .stats import format_difference, format_mean_std, paired_difference


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


def _marked(name, key, stale):
    return f"{name} (STALE)" if key in stale else name


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


def what_ran_table(stages):
    """(headers, rows): per stage, its wall time (from its record), what it computed in (a
    pretraining's scale.json, an evaluation's run; "a, then b from iteration N" where a resume
    changed it) and, for an evaluation, the world size and batch its run used (after rescaling
    to the GPUs at hand)."""
    rows = []
    for stage in stages:
        seconds = stage.record.read().get("seconds")
        run = read_final_metrics(stage.folder).get("run", {}) if stage.kind == "evaluate" else {}
        rows.append([stage.label, f"{seconds:.0f}" if isinstance(seconds, (int, float)) else "–",
                     _precision(stage, run), str(run.get("world_size", "")),
                     str(run.get("ims_per_batch", "")), str(run.get("images_per_process", ""))])
    return ["stage", "wall time (s)", "precision", "world size", "batch",
            "images per process"], rows


def _precision(stage, run: dict) -> str:
    if stage.kind == "evaluate" and "precision" in run:
        return f"{run['precision']} ({run.get('device', '?')})"
    if stage.kind != "pretrain":
        return ""
    try:
        history = json.loads((stage.folder / "scale.json").read_text()).get("arithmetic") or []
    except (OSError, ValueError, AttributeError):
        return ""
    return ", then ".join(
        f"{h.get('precision')} ({h.get('device')})"
        + (f" from iteration {h['from_iteration']}" if h.get("from_iteration") else "")
        for h in history if isinstance(h, dict))
