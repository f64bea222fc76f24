"""The pipeline's report: report.md and a self-contained report.html in the run's folder.

Sections: the results (transfer metrics per backbone as mean ± std over seeds with n and the
test-set size, published numbers beside them, each backbone's paired difference to the baseline
and whether it is within noise, a chart with error bars; the frozen-encoder probe when the run
has one), what ran (per stage: wall time, world size, batch; the run file, versions, commit),
pretraining curves (loss, kNN), the detectors' training curves, and predictions drawn beside the
ground truth.

Modules: stats (mean ± std, paired differences), data (the stages' outputs as tables), figures
(matplotlib, imported only when a figure is drawn), render (Markdown and HTML).
"""

from .data import probe_table, probe_values, read_metrics, results_table
from .render import write_report
from .stats import format_difference, format_mean_std, mean_std, paired_difference, t_95

__all__ = ["format_difference", "format_mean_std", "mean_std", "paired_difference",
           "probe_table", "probe_values", "read_metrics", "results_table", "t_95", "write_report"]
