"""The report's figures (matplotlib, imported when a figure is drawn: --status and --check
never pay for it). Labels come from run files: drawn as written ("$5", "a_b"), never parsed as
mathtext."""

import functools
from pathlib import Path

from .data import task_metric, task_metrics
from .stats import mean_std

PLAIN_TEXT = {"text.parse_math": False}


def _figure(draw):
    """`draw(plt, ...)` with pyplot imported (the Agg backend: no display) and labels as text."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with plt.rc_context(PLAIN_TEXT):
            return draw(plt, *args, **kwargs)
    return wrapper


@_figure
def curve_plot(plt, series: dict, key: str, ylabel: str, title: str, path: Path):
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


@_figure
def headline_chart(plt, spec, task, path: Path):
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

