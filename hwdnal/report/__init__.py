"""`RUN/report.md` with PNG plots: what the search kept, what it gained, how it got there.

Everything comes from the run's result.json, so a report can be written (again) at any time
without torch. A run without a budget or a LUT has no latency figures; the report then
leaves those rows and plots out and says why, rather than drawing empty axes. Plots are
drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so writing
a report from inside another program never opens a window or changes its settings.
"""

from hwdnal.report.document import PLOT_DIR, PLOTS, REPORT_NAME, write_report
from hwdnal.report.tables import architecture_curve, channel_rows, latency_rows, removed_blocks_text

__all__ = [
    "PLOTS", "PLOT_DIR", "REPORT_NAME", "architecture_curve", "channel_rows",
    "latency_rows", "removed_blocks_text", "write_report",
]
