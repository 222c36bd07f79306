"""keyed-evaluate's HTML report: one self-contained page from a report.json dict.

The page opens offline: its style is inline, its charts are inline SVG with text drawn as
paths (:mod:`keyed_serving.evaluation.charts`), it has no script, and its Content Security
Policy lets it load nothing at all. Every text taken from the report (model, versions,
classes) is escaped: they are user data.

    render(report) -> str
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any, NamedTuple

from keyed_serving.evaluation import charts
from keyed_serving.evaluation.charts import Chart, Series


class Shown(NamedTuple):
    """How a metric is shown: its name, which way is better, and whether with three
    decimals (a score of no unit) or four significant digits (on the label's own scale)."""

    label: str
    better: str
    decimals: bool


METRICS: dict[str, Shown] = {
    "accuracy": Shown("Accuracy", "higher is better", True),
    "balanced_accuracy": Shown("Balanced accuracy", "higher is better", True),
    "f1_macro": Shown("Macro F1", "higher is better", True),
    "log_loss": Shown("Log loss", "lower is better", True),
    "roc_auc": Shown("ROC AUC", "higher is better", True),
    "brier": Shown("Brier score", "lower is better", True),
    "mae": Shown("MAE", "lower is better", False),
    "rmse": Shown("RMSE", "lower is better", False),
    "r2": Shown("R²", "higher is better", True),
    "bias": Shown("Bias", "mean of prediction minus label; 0 is best", False),
}
NOT_METRICS = ("confusion_matrix",)
NONE = "&ndash;"  # a table cell with no value
# The metrics of each task (metrics.METRICS), shown as "no labels yet" when none is computed.
TASK_METRICS = {
    "classification": ("accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc", "brier"),
    "regression": ("mae", "rmse", "r2", "bias"),
}

# One line on what each diagnostic counts, as the join rules define it.
DIAGNOSTICS: dict[str, str] = {
    "labels": (
        "Label rows read (the capture's labels/ and any label file), before grouping by "
        "key and request id."
    ),
    "matched": "Labels (after grouping) that joined at least one prediction.",
    "orphan_labels": (
        "Labels (after grouping) that joined no prediction: no prediction of their request "
        "id, or none of their key within the max delay before their time."
    ),
    "duplicate_labels": "Extra labels equal to another of their group: counted, one is kept.",
    "conflicting_labels": "Groups (key and request id) whose labels disagree: the latest wins.",
    "unknown_class_labels": (
        "Labels of a class the model does not know: wrong for accuracy and F1, left out of "
        "log loss, ROC AUC and Brier score."
    ),
    "keys_predicted_more_than_once": (
        "Keys with more than one prediction: the policy picks which one a label joins."
    ),
    "unlabelled_past_max_delay": (
        "Predictions older than the max delay that no label joined: no label is expected "
        "for them any more."
    ),
    "failed_predictions": "Predictions answered with an error instead of a value.",
    "labelled_failed": "Labels that joined a failed prediction: counted, not scored.",
    "capture_drops": (
        "Prediction rows the server could not capture (full disk, unwritable directory, "
        "byte budget), from drops/."
    ),
}
# Counts worth a reader's attention when they are not zero.
WARNINGS = (
    "orphan_labels",
    "conflicting_labels",
    "unknown_class_labels",
    "unlabelled_past_max_delay",
    "labelled_failed",
    "capture_drops",
)

STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 0 auto; max-width: 1440px; padding: 1rem 1.5rem 3rem; color: #1a1a1a; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
dl.rules { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; }
dl.rules dt { color: #555; }
dl.rules dd { margin: 0; }
.table { overflow-x: auto; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .3rem .6rem; text-align: left;
         vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.interval { color: #666; font-size: .85em; }
.few, .none { color: #8a5a00; font-style: italic; }
tr.warn td, tr.warn th { background: #fff4e0; }
td.time { white-space: nowrap; }
div.charts { display: grid; gap: 1rem 2rem; align-items: start;
              grid-template-columns: repeat(auto-fill, minmax(min(100%, 620px), 1fr)); }
figure.chart { margin: 0; }
figure.chart.wide { grid-column: 1 / -1; max-width: 980px; }
figure.chart svg { max-width: 100%; height: auto; display: block; }
.note { color: #555; }
code { font-size: .95em; }
"""


def render(report: Mapping[str, Any]) -> str:
    """The whole page for a report.json dict (its shape: report.py)."""
    with charts.style():
        body = "\n".join(
            [
                header(report),
                versions_table(report),
                quality_section(report),
                per_version_section(report),
                labels_section(report),
                drift_section(report),
                diagnostics_section(report),
            ]
        )
    title = f"Model quality: {report.get('model', '')}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # Nothing may be fetched: no script, font, image or stylesheet beyond the inline one.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


# --- text -----------------------------------------------------------------------------


def when(text: str | None, otherwise: str = "") -> str:
    """An ISO-8601 time as a person reads it, in UTC; text that is no time, as it is."""
    if not text:
        return otherwise
    try:
        moment = charts.parse_time(text)
    except ValueError:
        return text
    if moment.second or moment.microsecond:
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    unit, length = charts.duration_unit(abs(seconds))
    amount = seconds / length
    shown = f"{amount:.0f}" if float(amount).is_integer() else f"{amount:.3g}"
    return f"{shown} {unit[:-1] if shown == '1' else unit}"


def metric_number(name: str, value: float) -> str:
    shown = METRICS.get(name)
    return f"{value:.3f}" if shown and shown.decimals else f"{value:.4g}"


def metric_cell(name: str, metric: Mapping[str, Any] | None, min_count: int) -> str:
    """One metric as a table cell: value and interval, or why there is none."""
    if not metric or not metric.get("n"):
        return '<td class="number none">no labels yet</td>'
    n = metric["n"]
    if metric.get("too_few"):
        return (
            f'<td class="number few" title="{n} labelled pairs; at least {min_count} '
            f'give a value">too few ({n} &lt; {min_count})</td>'
        )
    value = metric.get("value")
    if value is None:
        return (
            '<td class="number none" title="cannot be computed on these labels, e.g. ROC '
            f'AUC when one class only is labelled">n/a (n = {n})</td>'
        )
    low, high = metric.get("low"), metric.get("high")
    interval = (
        f'<br><span class="interval">{metric_number(name, low)} to '
        f"{metric_number(name, high)}, n = {n}</span>"
        if low is not None and high is not None
        else f'<br><span class="interval">n = {n}</span>'
    )
    return f'<td class="number">{metric_number(name, value)}{interval}</td>'


def metric_names(report: Mapping[str, Any]) -> list[str]:
    """The metrics in the report, in the page's order (any unknown ones after)."""
    found: list[str] = []
    for version in report.get("versions", {}).values():
        for source in [version.get("metrics") or {}] + [
            w.get("metrics") or {} for w in version.get("windows", [])
        ]:
            for name in source:
                if name not in found and name not in NOT_METRICS:
                    found.append(name)
    known = [name for name in METRICS if name in found]
    return known + [name for name in found if name not in METRICS]


def label_of(name: str) -> str:
    return METRICS[name].label if name in METRICS else name


# --- sections -------------------------------------------------------------------------


def header(report: Mapping[str, Any]) -> str:
    rules = report.get("rules") or {}
    task = report.get("task", "")
    classes = report.get("classes")
    task_text = escape(str(task))
    if classes:
        task_text += " of " + ", ".join(f"<code>{escape(str(c))}</code>" for c in classes)
    policy = rules.get("policy")
    items = [
        ("Task", task_text),
        (
            "Join policy",
            f"<code>{escape(str(policy))}</code>: a label with a request id joins that "
            "prediction; any other joins "
            + {
                "last": "the latest prediction of its key",
                "first": "the earliest prediction of its key",
                "all": "every prediction of its key",
            }.get(str(policy), "the predictions of its key that the policy picks")
            + " in the max delay before the label's time",
        ),
        ("Max delay", escape(duration(rules.get("max_delay_s")))),
        ("Window", escape(str(rules.get("window", "")))),
        (
            "Predictions from",
            f"{escape(when(rules.get('since'), 'the first capture'))} to "
            f"{escape(when(rules.get('until')))}",
        ),
        (
            "Intervals",
            f"{float(rules.get('confidence', 0.95)):.0%} percentile bootstrap; "
            f"“too few” under {escape(str(rules.get('min_count', '')))} labelled pairs",
        ),
        ("Engine", escape(str(report.get("engine", "")))),
        ("Generated", escape(when(report.get("generated")))),
    ]
    rows = "\n".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in items)
    return (
        f"<header>\n<h1>Model quality: {escape(str(report.get('model', '')))}</h1>\n"
        f'<dl class="rules">\n{rows}\n</dl>\n</header>'
    )


def versions_table(report: Mapping[str, Any]) -> str:
    """Each version's counts, and its headline metrics (a metric a row, a version a column)."""
    versions = report.get("versions") or {}
    if not versions:
        return '<h2 id="versions">Versions</h2>\n<p class="note">No predictions captured.</p>'
    heads = ["Version", "Predictions", "Failed", "Labelled", "Coverage", "First", "Last"]
    heads.append("Median label delay")
    rows = []
    for version, data in versions.items():
        coverage = data.get("coverage")
        delay = (data.get("label_delay_s") or {}).get("median")
        cells = [
            f"<th scope=row>{escape(str(version))}</th>",
            f'<td class="number">{data.get("predictions", 0):,}</td>',
            f'<td class="number">{data.get("failed", 0):,}</td>',
            f'<td class="number">{data.get("labelled", 0):,}</td>',
            f'<td class="number">{NONE if coverage is None else f"{coverage:.1%}"}</td>',
            f'<td class="time">{escape(when(data.get("first")))}</td>',
            f'<td class="time">{escape(when(data.get("last")))}</td>',
            f'<td class="number">{NONE if delay is None else escape(duration(delay))}</td>',
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    names = metric_names(report) or list(TASK_METRICS.get(str(report.get("task")), ()))
    min_count = int((report.get("rules") or {}).get("min_count", 0))
    quality_rows = []
    for name in names:
        cells = [f"<th scope=row>{escape(label_of(name))}</th>"]
        cells += [
            metric_cell(name, (data.get("metrics") or {}).get(name), min_count)
            for data in versions.values()
        ]
        quality_rows.append("<tr>" + "".join(cells) + "</tr>")
    version_heads = "".join(f"<th scope=col>{escape(str(v))}</th>" for v in versions)
    return "\n".join(
        [
            '<h2 id="versions">Versions</h2>',
            '<p class="note">In order of their first prediction. Coverage: labelled pairs '
            "over the predictions that did not fail.</p>",
            '<div class="table"><table class="versions">',
            "<thead><tr>" + "".join(f"<th scope=col>{escape(h)}</th>" for h in heads),
            "</tr></thead><tbody>",
            *rows,
            "</tbody></table></div>",
            '<h3 id="headline">Quality of each version</h3>',
            '<p class="note">Each metric on every labelled pair of the version; below it, '
            "its interval and the number of pairs.</p>",
            '<div class="table"><table class="quality">',
            f"<thead><tr><th scope=col>Metric</th>{version_heads}</tr></thead><tbody>",
            *quality_rows,
            "</tbody></table></div>",
        ]
    )


def series_of(report: Mapping[str, Any]) -> list[Series]:
    return [
        Series(index=index, version=str(version), windows=list(data.get("windows") or []))
        for index, (version, data) in enumerate((report.get("versions") or {}).items())
    ]


def figures(charts_drawn: Sequence[Chart | None]) -> str:
    drawn = "\n".join(
        f'<figure class="chart{" wide" if chart.wide else ""}" id="chart-{chart.name}">'
        f"{chart.svg}</figure>"
        for chart in charts_drawn
        if chart is not None
    )
    return f'<div class="charts">\n{drawn}\n</div>' if drawn else ""


def labelled(report: Mapping[str, Any]) -> bool:
    return any(v.get("labelled") for v in (report.get("versions") or {}).values())


def quality_section(report: Mapping[str, Any]) -> str:
    rules = report.get("rules") or {}
    window = str(rules.get("window", "window"))
    heading = '<h2 id="quality">Quality over time</h2>'
    if not labelled(report):
        return heading + '\n<p class="note none">No labels yet: no prediction has a label.</p>'
    series = series_of(report)
    drawn = []
    missing = []
    for name in metric_names(report):
        shown = METRICS.get(name, Shown(name, "", False))
        chart = charts.metric_over_time(
            name,
            shown.label,
            shown.better,
            series,
            window=window,
            min_count=int(rules.get("min_count", 0)),
            confidence=float(rules.get("confidence", 0.95)),
        )
        if chart is None:
            missing.append(shown.label)
        drawn.append(chart)
    note = (
        '<p class="note">Each metric per window of prediction time and per version, with '
        "its interval as a band. Hollow points: windows with too few labelled pairs for "
        "an interval. Shaded: windows younger than the max delay, whose labels may still "
        "come.</p>"
    )
    if missing:
        note += f'<p class="note none">No window has a value for: {escape(", ".join(missing))}.</p>'
    return "\n".join([heading, note, figures(drawn)])


def per_version_section(report: Mapping[str, Any]) -> str:
    heading = '<h2 id="errors">Errors by version</h2>'
    if not labelled(report):
        return heading + '\n<p class="note none">No labels yet.</p>'
    versions = list((report.get("versions") or {}).items())
    if report.get("task") == "regression":
        chart = charts.histograms(
            "residuals",
            "Residuals",
            "residual (prediction minus label)",
            "Residuals of the labelled predictions",
            [
                (i, str(v), d["residuals"])
                for i, (v, d) in enumerate(versions)
                if d.get("residuals")
            ],
            marker=0.0,
        )
        return "\n".join([heading, figures([chart])])
    parts = [heading]
    drawn: list[Chart | None] = [
        charts.calibration(
            [
                (i, str(v), d["calibration"])
                for i, (v, d) in enumerate(versions)
                if d.get("calibration")
            ]
        )
    ]
    for index, (version, data) in enumerate(versions):
        matrix = (data.get("metrics") or {}).get("confusion_matrix")
        if data.get("labelled") and matrix and matrix.get("labels"):
            drawn.append(charts.confusion(index, str(version), matrix))
    parts.append(figures(drawn))
    return "\n".join(parts)


def labels_section(report: Mapping[str, Any]) -> str:
    window = str((report.get("rules") or {}).get("window", "window"))
    series = series_of(report)
    versions = list((report.get("versions") or {}).items())
    drawn: list[Chart | None] = [charts.coverage_over_time(series, window=window)]
    delays = [
        (i, str(v), d["label_delay_s"])
        for i, (v, d) in enumerate(versions)
        if d.get("label_delay_s") and sum(d["label_delay_s"].get("counts") or []) > 0
    ]
    if delays:
        longest = max(max(h["edges"]) for _, _, h in delays)
        unit, length = charts.duration_unit(longest)
        drawn.append(
            charts.histograms(
                "delay",
                "Label delay",
                f"label time minus prediction time ({unit})",
                "Time from each prediction to its label",
                delays,
                scale=length,
                medians=True,
            )
        )
    note = (
        '<p class="note">Coverage: labelled pairs over the predictions that did not fail. '
        "Label delay: the label's time (or when it was received) minus its prediction's "
        "time, per pair; dashed, each version's median.</p>"
        if delays
        else '<p class="note none">No labels yet, so no label delay.</p>'
    )
    return "\n".join(['<h2 id="labels">Labels</h2>', note, figures(drawn)])


def drift_section(report: Mapping[str, Any]) -> str:
    window = str((report.get("rules") or {}).get("window", "window"))
    series = [one for one in series_of(report) if one.windows]
    drawn: list[Chart | None] = []
    if series:
        drawn.append(charts.volume_over_time(series, window=window))
        if report.get("task") == "regression":
            drawn.append(charts.regression_distribution(series, window=window))
        else:
            classes = [str(c) for c in report.get("classes") or []]
            drawn += [charts.class_shares(one, classes, window=window) for one in series]
    return "\n".join(
        [
            '<h2 id="drift">Predictions over time</h2>',
            '<p class="note">What the model predicted, label or not: a change here shows '
            "drift before labels arrive.</p>",
            figures(drawn),
        ]
    )


def diagnostics_section(report: Mapping[str, Any]) -> str:
    counts = report.get("diagnostics") or {}
    names = [name for name in DIAGNOSTICS if name in counts]
    names += [name for name in counts if name not in DIAGNOSTICS]
    rows = []
    for name in names:
        value = counts[name]
        warn = name in WARNINGS and value
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        rows.append(
            f"<tr{' class=warn' if warn else ''}><th scope=row><code>{escape(str(name))}"
            f'</code></th><td class="number">{escape(shown)}</td>'
            f"<td>{escape(DIAGNOSTICS.get(name, ''))}</td></tr>"
        )
    return (
        '<h2 id="diagnostics">Diagnostics</h2>\n'
        '<div class="table"><table class="diagnostics">\n'
        "<thead><tr><th scope=col>Count</th><th scope=col>Value</th>"
        "<th scope=col>Meaning</th></tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table></div>"
    )
