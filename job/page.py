"""report.html: one self-contained page per search (no script, no file or network fetch; the plots are embedded
PNGs): the summary, the trial table, each trial's learning curve with ASHA's stops, the parameter importances and
the best model's validation confusion matrix. Every value from the data or a trial (class names, errors) is
escaped: a class folder named `<script>` is text on the page."""

from __future__ import annotations

import base64
import html
import io
from typing import Sequence

from job import report

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 9px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
tr.best { background: #e8f4e8; font-weight: 600; }
.bar { display: inline-block; height: 0.9em; background: #4a7fc1; vertical-align: middle; margin-right: 6px; }
img { max-width: 100%; } code { background: #f4f4f4; padding: 1px 4px; }
"""


def write(path, *, title: str, summary: Sequence[str], trials: list[dict], params: Sequence[str], metric: str,
          best_id: str, importances: dict[str, float], confusion: list[list[int]], classes: Sequence[str],
          study_command: str) -> None:
    """The page, written to `path` (a local file)."""
    columns = ["number", "trial_id", *params, "epochs", metric, "best_epoch", "status", "error"]
    rows = "".join(
        f'<tr{" class=best" if t["trial_id"] == best_id else ""}>'
        + "".join(_cell(t.get(c)) for c in columns) + "</tr>\n" for t in trials)
    table = (f'<table id="trials"><thead><tr>{"".join(f"<th>{_e(c)}</th>" for c in columns)}</tr></thead>'
             f"<tbody>\n{rows}</tbody></table>")
    curves = _png(lambda out: report.plot_trials(out, trials, best_id, metric))
    bars = "".join(f'<tr><td>{_e(k)}</td><td class="text"><span class="bar" style="width:{300 * v:.0f}px"></span>'
                   f"{v:.2f}</td></tr>" for k, v in importances.items())
    importance = (f'<table id="importances">{bars}</table>' if importances else
                  '<p id="importances">Too few finished trials (or nothing searched) for Optuna to rank the settings.</p>')
    if confusion:
        head = "".join(f"<th>{_e(c)}</th>" for c in classes)
        body = "".join(f"<tr><th>{_e(c)}</th>{''.join(f'<td>{int(v)}</td>' for v in row)}</tr>"
                       for c, row in zip(classes, confusion))
        matrix = (f'<img alt="confusion matrix" src="{_png(lambda out: report.plot_confusion(out, confusion, classes))}">'
                  f'<table id="confusion"><tr><th>true \\ predicted</th>{head}</tr>{body}</table>')
    else:
        matrix = '<p id="confusion">Not recorded: this experiment was started by an earlier version of job.</p>'
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{_e(title)}</h1>
{"".join(f"<p>{_e(line)}</p>" for line in summary)}
<p>The study: <code>{_e(study_command)}</code></p>
<h2>Trials</h2>
{table}
<h2>Learning curves</h2>
<p>{_e(metric)} per epoch of every trial; &times; marks a trial ASHA stopped early, dotted lines errored trials.</p>
<img id="curves" alt="learning curves" src="{curves}">
<h2>Parameter importances</h2>
{importance}
<h2>Best model: validation confusion matrix (rows: true, columns: predicted)</h2>
{matrix}
</body></html>
"""
    path.write_text(page, encoding="utf-8")


def _png(draw) -> str:
    buffer = io.BytesIO()
    draw(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(value) -> str:
    if value is None:
        return "<td>-</td>"
    if isinstance(value, float):
        return f"<td>{_e(report.number(value))}</td>"
    return f'<td class="text">{_e(value)}</td>' if isinstance(value, str) else f"<td>{_e(value)}</td>"


def _e(value) -> str:
    return html.escape(str(value), quote=True)
