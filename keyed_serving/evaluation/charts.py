"""The report's charts: matplotlib figures written as SVG to inline in one HTML page.

Each function takes plain parts of report.json and returns a :class:`Chart`, whose SVG
needs nothing from outside the page: text is drawn as paths (``svg.fonttype = "path"``),
so no font is loaded, and there is no image or link. The marks a reader (or the test)
looks for carry a class: ``mark-line`` (a version's series), ``mark-band`` (its
interval), ``mark-pending`` (a window still waiting for labels), ``mark-cell`` (a
confusion-matrix cell), ``mark-share`` (a class's share of predictions), and so on.

Names of models, versions and classes are user data. In the SVG they become glyph paths,
never text or markup, and matplotlib's mathtext is off (``text.parse_math``), so a ``$``
in a class name is drawn as a ``$``. The chart's title and description (its accessible
text) are escaped here.
"""

from __future__ import annotations

import contextlib
import datetime
import html
import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
from matplotlib import colormaps
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

# One look for every chart. svg.hashsalt makes the SVG's internal ids the same on every
# run, so a report of the same data is the same page.
STYLE: dict[str, Any] = {
    "svg.fonttype": "path",
    "svg.hashsalt": "keyed-evaluate",
    "text.parse_math": False,
    "timezone": "UTC",
    "date.converter": "concise",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "legend.fontsize": 8,
}
WIDTH_IN = 7.2
HEIGHT_IN = 3.0
PENDING_COLOR = "0.85"
LONGEST_NAME = 32  # characters of a class or version name drawn in a chart
MANY_POINTS = 60  # points in a series past which it is drawn without markers

Window = Mapping[str, Any]


@dataclass(frozen=True)
class Chart:
    """One chart: ``name`` is its id in the page (no user text in it), ``svg`` the markup."""

    name: str
    title: str
    description: str
    svg: str
    wide: bool = False  # wider than a chart beside another (a big confusion matrix)


@dataclass(frozen=True)
class Series:
    """One version's windows, with its place in the report (its colour)."""

    index: int
    version: str
    windows: Sequence[Window]


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The charts' settings, for the time of one report; the caller's are left alone."""
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]  # stubs list keys as Literals
        yield


def color(index: int) -> Any:
    return colormaps["tab10"](index % 10)


def class_color(index: int, count: int) -> Any:
    """Classes in other colours than versions (tab10), so a class is not read as one."""
    return colormaps["Set2" if count <= 8 else "tab20"](index % (8 if count <= 8 else 20))


def short(name: str) -> str:
    return name if len(name) <= LONGEST_NAME else name[: LONGEST_NAME - 1] + "…"


def parse_time(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def x_of(moment: datetime.datetime) -> float:
    """A time as matplotlib's date number (the axes say it is a date: :func:`time_axes`)."""
    return float(mdates.date2num(moment))


def start_of(window: Window) -> float:
    return x_of(parse_time(window["start"]))


def end_of(window: Window) -> float:
    return x_of(parse_time(window["end"]))


def dot(points: int, size: float = 4) -> float:
    """The marker size of a series of so many points: none where they would run together."""
    return size if points <= MANY_POINTS else 0


def middle(window: Window) -> float:
    return (start_of(window) + end_of(window)) / 2


# --- turning a figure into inline SVG -------------------------------------------------

_MARK = re.compile(r'id="mark-([a-z]+)-(\d+)"')


def inline_svg(drawn: Figure, name: str, title: str, description: str) -> Chart:
    """The figure as an ``<svg>`` element for an HTML page: its ids prefixed with the
    chart's name (several SVGs share one document), marks given their class, and a
    ``<title>`` and ``<desc>`` it is labelled by."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name)  # a metric's name comes from the report
    buffer = io.StringIO()
    drawn.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    # matplotlib writes each drawn text into a comment too (escaped): not needed here.
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    # Two decimals of a point are enough for a path on a screen (not for a scale).
    svg = re.sub(
        r' d="([^"]*)"',
        lambda found: ' d="' + re.sub(r"(\.\d\d)\d+", r"\1", found[1]) + '"',
        svg,
    )
    svg = re.sub(r"\s*\n\s*", " ", svg)
    svg = _MARK.sub(lambda found: f'class="mark mark-{found[1]}" data-index="{found[2]}"', svg)
    # Ids only where something refers to them (glyphs, clips, markers), prefixed.
    used = set(re.findall(r'href="#([^"]+)"', svg)) | set(re.findall(r"url\(#([^)]+)\)", svg))
    svg = re.sub(
        r'\sid="([^"]+)"',
        lambda found: f' id="{name}-{found[1]}"' if found[1] in used else "",
        svg,
    )
    svg = re.sub(r'href="#', f'href="#{name}-', svg)
    svg = re.sub(r"url\(#", f"url(#{name}-", svg)
    labels = (
        f'<title id="{name}-title">{html.escape(title)}</title>'
        f'<desc id="{name}-desc">{html.escape(description)}</desc>'
    )
    svg = re.sub(
        r"<svg\b([^>]*)>",
        lambda found: (
            f'<svg{found[1]} role="img" aria-labelledby="{name}-title {name}-desc">{labels}'
        ),
        svg,
        count=1,
    )
    wide = drawn.get_figwidth() > WIDTH_IN
    return Chart(name=name, title=title, description=description, svg=svg.strip(), wide=wide)


def new_figure(height: float = HEIGHT_IN, rows: int = 1) -> tuple[Figure, list[Axes]]:
    drawn = Figure(figsize=(WIDTH_IN, height), layout="constrained")
    axes = drawn.subplots(rows, 1, sharex=True, squeeze=False)
    return drawn, [row[0] for row in axes]


# --- pieces shared by the charts over time --------------------------------------------


def pending_spans(series: Sequence[Series]) -> list[tuple[float, float]]:
    """The windows still waiting for labels (complete = false), once each across versions."""
    spans = {
        (start_of(window), end_of(window))
        for one in series
        for window in one.windows
        if not window.get("complete", True)
    }
    return sorted(spans)


def shade_pending(axes: Axes, spans: Sequence[tuple[float, float]]) -> None:
    for number, (start, end) in enumerate(spans):
        axes.axvspan(
            start,
            end,
            color=PENDING_COLOR,
            alpha=0.6,
            linewidth=0,
            zorder=0,
            gid=f"mark-pending-{number}",
        )


def stepped(
    windows: Sequence[Window], low: Sequence[float | None], high: Sequence[float | None]
) -> tuple[list[float], list[float], list[float]]:
    """A band drawn across each window's whole width (so one window shows too), broken
    where windows are not next to each other or a bound is missing."""
    xs: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    previous_end: float | None = None
    for window, bottom, top in zip(windows, low, high, strict=True):
        start, end = start_of(window), end_of(window)
        if previous_end is not None and start != previous_end:
            xs.append(previous_end)
            lows.append(math.nan)
            highs.append(math.nan)
        xs += [start, end]
        lows += [math.nan if bottom is None else bottom] * 2
        highs += [math.nan if top is None else top] * 2
        previous_end = end
    return xs, lows, highs


def along(
    windows: Sequence[Window], values: Sequence[float | None]
) -> tuple[list[float], list[float]]:
    """A series over windows, at their middles, broken where windows are not next to each
    other: a window with no predictions is not in the report, so no line crosses it."""
    xs: list[float] = []
    ys: list[float] = []
    previous_end: float | None = None
    for window, value in zip(windows, values, strict=True):
        if previous_end is not None and start_of(window) != previous_end:
            xs.append(previous_end)
            ys.append(math.nan)
        xs.append(middle(window))
        ys.append(math.nan if value is None else value)
        previous_end = end_of(window)
    return xs, ys


def time_axes(
    axes: Axes,
    series: Sequence[Series],
    title: str,
    ylabel: str,
    handles: list[Any],
    legend_title: str | None = None,
) -> None:
    """Title, labels and legend of a chart over prediction time; its x range is the span of
    every version's windows, so that the charts of one report line up."""
    axes.xaxis_date()
    windows = [w for one in series for w in one.windows]
    if windows:
        axes.set_xlim(min(map(start_of, windows)), max(map(end_of, windows)))
    axes.set_title(title)
    axes.set_xlabel("prediction time (UTC)")
    axes.set_ylabel(ylabel)
    if len(handles) > 1:
        axes.legend(
            handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), title=legend_title
        )


def pending_handle() -> Patch:
    return Patch(color=PENDING_COLOR, alpha=0.6, label="waiting for labels")


def pending_sentence(spans: Sequence[Any]) -> str:
    if not spans:
        return ""
    return f" Shaded: {len(spans)} window(s) still waiting for labels."


# --- the charts -----------------------------------------------------------------------


def metric_over_time(
    name: str,
    label: str,
    hint: str,
    series: Sequence[Series],
    *,
    window: str,
    min_count: int,
    confidence: float,
) -> Chart | None:
    """A metric per window, a line per version, its interval as a band; windows with too
    few labels as hollow points off the line. None when no window has a value."""
    drawn, (axes,) = new_figure()
    spans = pending_spans(series)
    shade_pending(axes, spans)
    handles: list[Any] = []
    described: list[str] = []
    few = False
    for one in series:
        scored = [w for w in one.windows if (w.get("metrics") or {}).get(name, {}).get("n")]
        metrics = [w["metrics"][name] for w in scored]
        enough = [
            (w, m)
            for w, m in zip(scored, metrics, strict=True)
            if not m["too_few"] and m["value"] is not None
        ]
        too_few = [
            (w, m)
            for w, m in zip(scored, metrics, strict=True)
            if m["too_few"] and m["value"] is not None
        ]
        if not enough and not too_few:
            continue
        tint = color(one.index)
        if enough:
            (line,) = axes.plot(
                [middle(w) for w, _ in enough],
                [m["value"] for _, m in enough],
                marker="o",
                markersize=dot(len(enough)),
                color=tint,
                label=short(one.version),
                gid=f"mark-line-{one.index}",
            )
            handles.append(line)
            xs, lows, highs = stepped(
                [w for w, _ in enough],
                [m["low"] for _, m in enough],
                [m["high"] for _, m in enough],
            )
            band(axes, xs, lows, highs, tint, one.index)
        if too_few:
            few = True
            axes.plot(
                [middle(w) for w, _ in too_few],
                [m["value"] for _, m in too_few],
                linestyle="none",
                marker="o",
                markersize=5,
                markerfacecolor="white",
                color=tint,
                gid=f"mark-few-{one.index}",
            )
            if not enough:
                handles.append(Line2D([], [], color=tint, marker="o", label=short(one.version)))
        described.append(
            f"version {one.version}: {len(enough)} window(s) scored"
            + (f", {len(too_few)} with too few labels" if too_few else "")
        )
    if not described:
        return None
    handles.append(Patch(color="0.5", alpha=0.3, label=f"{confidence:.0%} interval"))
    if few:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markerfacecolor="white",
                color="0.3",
                label=f"too few labels (< {min_count})",
            )
        )
    if spans:
        handles.append(pending_handle())
    title = f"{label} per {window} ({hint})"
    time_axes(axes, series, title, label, handles)
    description = (
        f"{label} of each {window} window of prediction time, a line per version with its "
        f"{confidence:.0%} interval as a band; "
        + "; ".join(described)
        + "."
        + pending_sentence(spans)
    )
    return inline_svg(drawn, f"metric-{name}", title, description)


def coverage_over_time(series: Sequence[Series], *, window: str) -> Chart:
    """Labelled pairs over the predictions that did not fail, per window and version."""
    drawn, (axes,) = new_figure()
    spans = pending_spans(series)
    shade_pending(axes, spans)
    described = []
    for one in series:
        shares = [
            100 * w["labelled"] / (w["predictions"] - w["failed"])
            if w["predictions"] > w["failed"]
            else None
            for w in one.windows
        ]
        points = [share for share in shares if share is not None]
        if not points:
            continue
        axes.plot(
            *along(one.windows, shares),
            marker="o",
            markersize=dot(len(points)),
            color=color(one.index),
            label=short(one.version),
            gid=f"mark-line-{one.index}",
        )
        described.append(f"version {one.version} from {min(points):.0f}% to {max(points):.0f}%")
    axes.set_ylim(-2, 102)
    title = f"Label coverage per {window}"
    handles, _ = axes.get_legend_handles_labels()
    if spans:
        handles.append(pending_handle())
    time_axes(axes, series, title, "labelled / predicted (%)", handles)
    description = (
        f"Share of each {window}'s predictions (failed ones excepted) that a label joined, "
        "a line per version: " + ("; ".join(described) or "no predictions") + "."
    ) + pending_sentence(spans)
    return inline_svg(drawn, "coverage", title, description)


def volume_over_time(series: Sequence[Series], *, window: str) -> Chart:
    """Predictions per window and version, and the failed ones among them."""
    drawn, (axes,) = new_figure()
    described = []
    any_failed = False
    for one in series:
        tint = color(one.index)
        axes.plot(
            *along(one.windows, [w["predictions"] for w in one.windows]),
            marker="o",
            markersize=dot(len(one.windows)),
            color=tint,
            label=short(one.version),
            gid=f"mark-line-{one.index}",
        )
        failed = sum(w["failed"] for w in one.windows)
        if failed:
            any_failed = True
            axes.plot(
                *along(one.windows, [w["failed"] for w in one.windows]),
                linestyle=":",
                marker="x",
                markersize=dot(len(one.windows)),
                color=tint,
                gid=f"mark-failed-{one.index}",
            )
        described.append(
            f"version {one.version}: {sum(w['predictions'] for w in one.windows)} predictions "
            f"in {len(one.windows)} window(s), {failed} failed"
        )
    axes.set_ylim(bottom=0)
    title = f"Predictions per {window}"
    handles, _ = axes.get_legend_handles_labels()
    if any_failed:
        handles.append(Line2D([], [], linestyle=":", marker="x", color="0.3", label="failed"))
    time_axes(axes, series, title, "predictions", handles)
    description = "Predictions captured in each window, a line per version (failed ones dotted): "
    return inline_svg(drawn, "volume", title, description + "; ".join(described) + ".")


def class_shares(one: Series, classes: Sequence[str], *, window: str) -> Chart:
    """A classifier's predictions over time: each class's share of the window's predictions
    (stacked), and the mean probability the model gave each class."""
    drawn, (shares, probabilities) = new_figure(height=4.6, rows=2)
    shown = list(classes)
    for w in one.windows:
        distribution = w.get("distribution") or {}
        for name in [*distribution.get("share", {}), *distribution.get("mean_probability", {})]:
            if name not in shown:
                shown.append(name)
    base = [0.0] * len(one.windows)
    for number, name in enumerate(shown):
        share = [
            ((w.get("distribution") or {}).get("share") or {}).get(name) or 0.0 for w in one.windows
        ]
        top = [b + s for b, s in zip(base, share, strict=True)]
        xs, lows, highs = stepped(one.windows, base, top)
        shares.fill_between(
            xs,
            [100 * y for y in lows],
            [100 * y for y in highs],
            color=class_color(number, len(shown)),
            linewidth=0,
            label=short(name),
            gid=f"mark-share-{number}",
        )
        base = top
        probability = [
            ((w.get("distribution") or {}).get("mean_probability") or {}).get(name)
            for w in one.windows
        ]
        points = [100 * p for p in probability if p is not None]
        if points:
            probabilities.plot(
                *along(one.windows, [None if p is None else 100 * p for p in probability]),
                marker="o",
                markersize=dot(len(points), 3),
                color=class_color(number, len(shown)),
                gid=f"mark-probability-{number}",
            )
    shares.set_ylim(0, 100)
    title = f"Predicted classes per {window}, version {short(one.version)}"
    handles, _ = shares.get_legend_handles_labels()
    time_axes(shares, [one], title, "share of predictions (%)", handles, "class")
    time_axes(probabilities, [one], "", "mean probability (%)", [])
    shares.set_xlabel("")
    last = (one.windows[-1].get("distribution") or {}).get("share") or {}
    description = (
        f"Version {one.version}: the share of each class among each {window}'s predictions "
        "(stacked, top) and the mean probability given to each class (bottom), over "
        f"{len(one.windows)} window(s). Last window: "
        + ", ".join(f"{name} {value:.0%}" for name, value in last.items() if value is not None)
        + "."
    )
    return inline_svg(drawn, f"shares-{one.index}", title, description)


def regression_distribution(series: Sequence[Series], *, window: str) -> Chart:
    """A regressor's predictions over time: mean per window and version, p10 to p90 as a
    band, the median dashed."""
    drawn, (axes,) = new_figure()
    described = []
    for one in series:
        windows = one.windows
        spread = [w.get("distribution") or {} for w in windows]
        means = [d["mean"] for d in spread if d.get("mean") is not None]
        if not means:
            continue
        tint = color(one.index)
        axes.plot(
            *along(windows, [d.get("mean") for d in spread]),
            marker="o",
            markersize=dot(len(means)),
            color=tint,
            label=short(one.version),
            gid=f"mark-line-{one.index}",
        )
        axes.plot(
            *along(windows, [d.get("p50") for d in spread]),
            linestyle="--",
            color=tint,
            gid=f"mark-median-{one.index}",
        )
        band_x, lows, highs = stepped(
            windows, [d.get("p10") for d in spread], [d.get("p90") for d in spread]
        )
        band(axes, band_x, lows, highs, tint, one.index)
        described.append(f"version {one.version}: mean from {min(means):.4g} to {max(means):.4g}")
    handles, _ = axes.get_legend_handles_labels()
    handles += [
        Line2D([], [], linestyle="--", color="0.3", label="median"),
        Patch(color="0.5", alpha=0.3, label="p10 to p90"),
    ]
    title = f"Predictions per {window}: mean, median and p10 to p90"
    time_axes(axes, series, title, "prediction", handles)
    description = (
        f"Distribution of the predictions in each {window}, a line per version (mean), "
        "dashed median, band from the 10th to the 90th percentile: "
        + ("; ".join(described) or "no predictions")
        + "."
    )
    return inline_svg(drawn, "distribution", title, description)


def confusion(index: int, version: str, matrix: Mapping[str, Any]) -> Chart:
    """Counts of (label, prediction) pairs, coloured by the share of each label's row."""
    labels: list[str] = [str(name) for name in matrix["labels"]]
    counts: list[list[int]] = matrix["counts"]
    size = max(len(labels), 1)
    side = min(max(2.4, 0.45 * size + 1.6), 9.0)
    drawn = Figure(figsize=(side + 1.2, side), layout="constrained")
    axes = drawn.subplots()
    palette = colormaps["Blues"]
    font = 8 if size <= 8 else max(4, 8 - (size - 8) // 3)
    for row, line in enumerate(counts):
        total = sum(line)
        for column, count in enumerate(line):
            share = count / total if total else 0.0
            axes.add_patch(
                Rectangle(
                    (column, row),
                    1,
                    1,
                    facecolor=palette(0.08 + 0.85 * share),
                    edgecolor="white",
                    gid=f"mark-cell-{row * size + column}",
                )
            )
            axes.text(
                column + 0.5,
                row + 0.5,
                str(count),
                ha="center",
                va="center",
                fontsize=font,
                color="white" if share > 0.55 else "black",
            )
    axes.set_xlim(0, size)
    axes.set_ylim(size, 0)
    axes.set_aspect("equal")
    axes.grid(False)
    axes.set_xticks(
        [i + 0.5 for i in range(size)], [short(n) for n in labels], rotation=45, ha="right"
    )
    axes.set_yticks([i + 0.5 for i in range(size)], [short(n) for n in labels])
    axes.tick_params(length=0)
    axes.set_xlabel("prediction")
    axes.set_ylabel("label")
    title = f"Confusion matrix, version {short(version)}"
    axes.set_title(title)
    total = sum(map(sum, counts))
    right = sum(counts[i][i] for i in range(min(len(counts), size)))
    description = (
        f"Version {version}: {total} labelled predictions over {size} classes "
        f"(rows: label, columns: prediction), {right} on the diagonal. Colour: share of the row."
    )
    return inline_svg(drawn, f"confusion-{index}", title, description)


def calibration(curves: Sequence[tuple[int, str, Mapping[str, Any]]]) -> Chart | None:
    """Observed frequency against the mean predicted probability, per bin, a line per
    version; the diagonal is a perfectly calibrated model."""
    drawn, (axes,) = new_figure(height=3.6)
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="calibrated")
    positive = None
    described = []
    for index, version, curve in curves:
        bins = [
            b for b in curve.get("bins", []) if b.get("n") and b.get("mean_predicted") is not None
        ]
        if not bins:
            continue
        positive = curve.get("positive")
        axes.plot(
            [b["mean_predicted"] for b in bins],
            [b["observed"] for b in bins],
            marker="o",
            markersize=4,
            color=color(index),
            label=short(version),
            gid=f"mark-line-{index}",
        )
        described.append(f"version {version}: {len(bins)} bins, {sum(b['n'] for b in bins)} pairs")
    if not described:
        return None
    if positive == "top":
        what, observed = "probability of the predicted class", "share predicted right"
    else:
        name = short(str(positive))
        what, observed = f"predicted probability of {name}", f"share labelled {name}"
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel(what)
    axes.set_ylabel(observed)
    title = "Calibration"
    axes.set_title(title)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    description = (
        f"Calibration curve: {observed} against the mean {what} in each bin of predicted "
        "probability, a line per version; the dashed diagonal is a calibrated model: "
        + "; ".join(described)
        + "."
    )
    return inline_svg(drawn, "calibration", title, description)


def histograms(
    name: str,
    title: str,
    xlabel: str,
    what: str,
    series: Sequence[tuple[int, str, Mapping[str, Any]]],
    *,
    scale: float = 1.0,
    marker: float | None = None,
    medians: bool = False,
) -> Chart | None:
    """A histogram per version as a step line, each as shares of its own pairs (versions
    with different counts compare); ``scale`` divides the edges (seconds to hours, ...)."""
    drawn, (axes,) = new_figure()
    described = []
    for index, version, histogram in series:
        counts = histogram.get("counts") or []
        total = sum(counts)
        if not total:
            continue
        edges = [edge / scale for edge in histogram["edges"]]
        tint = color(index)
        axes.stairs(
            [100 * c / total for c in counts],
            edges,
            color=tint,
            linewidth=1.5,
            label=short(version),
            gid=f"mark-histogram-{index}",
        )
        text = f"version {version}: {total} pairs"
        median = histogram.get("median")
        if medians and median is not None:
            axes.axvline(
                median / scale, color=tint, linestyle="--", linewidth=1, gid=f"mark-median-{index}"
            )
            text += f", median {median / scale:.3g}"
        described.append(text)
    if not described:
        return None
    if marker is not None:
        axes.axvline(marker, color="0.4", linewidth=1)
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("share of pairs (%)")
    handles, _ = axes.get_legend_handles_labels()
    if medians:
        handles.append(Line2D([], [], linestyle="--", color="0.3", label="median"))
    if len(handles) > 1:
        axes.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return inline_svg(
        drawn, name, title, f"{what}, a step line per version: " + "; ".join(described) + "."
    )


def duration_unit(seconds: float) -> tuple[str, float]:
    """The unit a span of ``seconds`` reads best in, and its length in seconds."""
    for unit, length, below in (
        ("seconds", 1, 120),
        ("minutes", 60, 7200),
        ("hours", 3600, 172800),
    ):
        if seconds < below:
            return unit, length
    return "days", 86400


def band(axes: Any, xs: Any, lows: Any, highs: Any, tint: Any, index: int) -> None:
    """A version's interval (or spread) as a light band, marked for the page's test."""
    axes.fill_between(
        xs, lows, highs, color=tint, alpha=0.18, linewidth=0, gid=f"mark-band-{index}"
    )
