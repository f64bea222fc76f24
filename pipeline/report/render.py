"""The report's pages: the blocks of every section, as report.md and a self-contained
report.html (images embedded)."""

import base64
import html
from pathlib import Path

from ssl2det.environment import collect_env

from ..spec import replicate_name
from .data import _marked, read_metrics, what_ran_table
from .figures import curve_plot
from .sections import SECTIONS


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
        plot = curve_plot(pretrain, key, label, f"pretraining: {label}", figures / name)
        blocks.append(("img", plot, label) if plot else ("p", f"No {label} recorded: {why}."))
    return blocks


def _blocks(spec, stale, stages):
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
    results = [block for section in SECTIONS for block in section(spec, stale, figures)]
    blocks += results or [("p", "This run has no transfer task, classification set or probe: "
                                "its results are the pretraining runs below.")]

    blocks += [("h2", "What ran"), ("p", "The run file:"), ("code", spec.source)]
    if stages:
        headers, rows = what_ran_table(stages)
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
        plot = curve_plot(series, "total_loss", "total loss", f"{task.name}: training loss",
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


def write_report(spec, stale=(), stages=()) -> Path:
    """Write report.md and report.html (images embedded) into the run folder; print the
    results tables; return the path of report.md. `stale`: keys of stages kept out of date;
    `stages`: the run's stages but the report, for "what ran"."""
    blocks = _blocks(spec, stale, stages)
    out, report = spec.layout.root, spec.layout.report(spec.report_name)
    report.write_text(_markdown(blocks, out))
    report.with_suffix(".html").write_text(_html(blocks))
    results = blocks[blocks.index(("h2", "Results")):blocks.index(("h2", "What ran"))]
    print("\n" + _markdown([block for block in results if block[0] == "table"], out))
    return report

