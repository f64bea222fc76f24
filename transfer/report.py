"""The pipeline's report: report.md and a self-contained report.html in the run's folder.

Sections: the results (transfer metrics against the baselines, and the frozen-encoder probe
when the run has one), the run (its YAML and the software versions), pretraining curves (loss,
kNN), the detectors' training curves, and predictions drawn on test images.
"""

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ssl2det.environment import collect_env  # noqa: E402

from .layout import RANDOM  # noqa: E402
from .metrics import headline, read_final_metrics  # noqa: E402



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


def results_table(spec, stale=()):
    """(headers, rows) of the final metrics of every (task, backbone); `stale`: the keys of the
    stages kept although their inputs changed."""
    rows, columns = [], []
    for task in spec.transfer:
        for backbone in task.backbones:
            flat = headline(read_final_metrics(spec.layout.evaluate(task.name, backbone)))
            columns += [c for c in flat if c not in columns]
            rows.append((task.name, _marked(backbone, ("evaluate", task.name, backbone), stale),
                         flat))
    headers = ["task", "backbone", *columns]
    return headers, [[t, b, *(f"{flat[c]:.2f}" if c in flat else "–" for c in columns)]
                     for t, b, flat in rows]


def probe_table(spec, stale=()):
    """(headers, rows) of the kNN and linear-probe top-1 of every probed encoder."""
    names = [r.name for r in spec.pretrain] + ([RANDOM] if spec.probe.baseline else [])
    rows = []
    for name in names:
        path = spec.layout.probe_result(name)
        result = json.loads(path.read_text()) if path.is_file() else {}
        rows.append([_marked(name, ("probe", name), stale),
                     *(f"{result[k]:.2f}" if k in result else "–"
                       for k in ("knn_top1", "linear_top1", "linear_top1_best"))])
    return ["run", "kNN top-1 (%)", "linear top-1, last epoch (%)", "linear top-1, best epoch (%)"], rows


def _blocks(spec, stale):
    layout = spec.layout
    figures = layout.report_files
    figures.mkdir(exist_ok=True)
    blocks = [("h1", f"Pipeline report: {layout.root.name}")]
    if stale:
        blocks.append(("p", "STALE: the inputs of these stages changed after they ran, and they "
                            "were kept (--keep-stale), so their rows below do not come from the "
                            "run file shown: " + ", ".join(" ".join(k) for k in stale)
                       + ". Run without --keep-stale to redo them."))
    blocks.append(("h2", "Results"))
    if spec.transfer:
        headers, rows = results_table(spec, stale)
        blocks += [("p", "Detection/segmentation metrics on the test set after fine-tuning, for "
                         f"each backbone: '{RANDOM}' is a randomly initialised encoder; the "
                         "others were pretrained by the runs below and converted with "
                         "tools/convert_to_d2.py."),
                   ("table", headers, rows)]
    if spec.probe:
        headers, rows = probe_table(spec, stale)
        blocks += [("p", f"Frozen encoders on {spec.probe.val_root}: weighted kNN top-1 and "
                         f"linear-probe top-1 after the last and at the best of "
                         f"{spec.probe.linear_epochs} epochs ({spec.probe.linear_protocol} "
                         f"protocol, pretrain/eval/linear.py), the probe trained on "
                         f"{spec.probe.train_root}."),
                   ("table", headers, rows)]

    blocks += [("h2", "The run"), ("p", "The run file:"), ("code", spec.source),
               ("p", "Software and machine:"),
               ("table", ["", "version"], [list(r) for r in collect_env()])]

    pretrain = {r.name: read_metrics(layout.pretrain(r.name) / "metrics.json")
                for r in spec.pretrain}
    blocks.append(("h2", "Pretraining"))
    summary = []
    for run in spec.pretrain:
        rows_ = pretrain[run.name]
        last = rows_[-1] if rows_ else {}
        knn = [r["knn_top1"] for r in rows_ if "knn_top1" in r]
        summary.append([_marked(run.name, ("pretrain", run.name), stale), Path(run.config).name, str(last.get("iteration", "–")),
                        f"{last['loss']:.4f}" if "loss" in last else "–",
                        f"{knn[-1]:.2f}" if knn else "–"])
    blocks.append(("table", ["run", "config", "last iteration", "last loss", "kNN top-1"],
                   summary))
    for key, label, name in (("loss", "loss (sum of terms)", "pretrain_loss.png"),
                             ("knn_top1", "kNN top-1 (%)", "pretrain_knn.png")):
        plot = _curve_plot(pretrain, key, label, f"pretraining: {label}", figures / name)
        blocks.append(("img", plot, label) if plot else
                      ("p", f"No {label} recorded (kNN needs DATA.VAL_ROOT)."))

    if not spec.transfer:
        return blocks
    blocks.append(("h2", "Fine-tuning"))
    for task in spec.transfer:
        series = {b: read_metrics(layout.finetune(task.name, b) / "metrics.json")
                  for b in task.backbones}
        plot = _curve_plot(series, "total_loss", "total loss", f"{task.name}: training loss",
                           figures / f"finetune_{task.name}.png")
        blocks.append(("img", plot, f"{task.name}: detector training loss") if plot else
                      ("p", f"{task.name}: no training metrics found."))

    blocks.append(("h2", "Predictions"))
    for task in spec.transfer:
        for backbone in task.backbones:
            images = sorted((layout.evaluate(task.name, backbone) / "predictions").glob("*.png"))
            if images:
                blocks.append(("images", images, f"{task.name}, fine-tuned from {backbone}"))
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


def write_report(spec, stale=()) -> Path:
    """Write report.md and report.html (images embedded) into the run folder; print the
    results tables; return the path of report.md. `stale`: keys of stages kept out of date."""
    blocks = _blocks(spec, stale)
    out = spec.layout.root
    (out / "report.md").write_text(_markdown(blocks, out))
    (out / "report.html").write_text(_html(blocks))
    tables = ([results_table(spec, stale)] if spec.transfer else []) + (
        [probe_table(spec, stale)] if spec.probe else [])
    print("\n" + _markdown([("table", headers, rows) for headers, rows in tables], out))
    return out / "report.md"
