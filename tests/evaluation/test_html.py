"""keyed-evaluate's HTML report, opened in a real headless browser (Debian's chromium,
driven by Playwright) with every network request refused: it must fetch nothing, draw
each chart with its marks, and show user text (class names, versions) as text."""

from __future__ import annotations

import datetime
import functools
import re
import shutil
from collections.abc import Iterator
from html import escape
from typing import Any

import pytest

from keyed_serving.evaluation.html import render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPORT_URL = "http://report.invalid/report.html"
SCRIPT = "<script>alert(1)</script>"
DAY = datetime.timedelta(days=1)
START = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
UNTIL = datetime.datetime(2026, 11, 9, tzinfo=datetime.UTC)
MAX_DELAY = 2 * DAY
MIN_COUNT = 30


# --- report dicts, in the shape of contract section 4 --------------------------------


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def metric(value: float | None, n: int) -> dict[str, Any]:
    too_few = n < MIN_COUNT
    return {
        "value": value if n else None,
        "low": None if too_few or value is None else value - 0.04,
        "high": None if too_few or value is None else value + 0.03,
        "n": n,
        "too_few": too_few,
    }


def window(day: int, predictions: int, labelled: int, metrics: dict[str, Any], distribution: Any):
    start = START + day * DAY
    return {
        "start": iso(start),
        "end": iso(start + DAY),
        "predictions": predictions,
        "failed": 2,
        "labelled": labelled,
        "complete": start + DAY + MAX_DELAY <= UNTIL,
        "metrics": metrics,
        "distribution": distribution,
    }


def classifier_metrics(labelled: int, shift: float) -> dict[str, Any]:
    return {
        "accuracy": metric(0.9 - shift, labelled),
        "balanced_accuracy": metric(0.85 - shift, labelled),
        "f1_macro": metric(0.84 - shift, labelled),
        "log_loss": metric(0.3 + shift, labelled),
        "roc_auc": metric(0.95 - shift, labelled),
        "brier": metric(0.15 + shift, labelled),
    }


def regressor_metrics(labelled: int, shift: float) -> dict[str, Any]:
    return {
        "mae": metric(1.5 + shift, labelled),
        "rmse": metric(2.1 + shift, labelled),
        "r2": metric(0.7 - shift, labelled),
        "bias": metric(0.1 + shift, labelled),
    }


def version(
    days: range, labelled: list[int], metrics: Any, distribution: Any, offset: float, **whole: Any
) -> dict[str, Any]:
    windows = [
        window(
            day,
            100 + 10 * day,
            count,
            metrics(count, offset + 0.01 * day),
            distribution(day),
        )
        for day, count in zip(days, labelled, strict=True)
    ]
    predictions = sum(w["predictions"] for w in windows)
    failed = sum(w["failed"] for w in windows)
    scored = sum(labelled)
    return {
        "predictions": predictions,
        "failed": failed,
        "labelled": scored,
        "coverage": scored / (predictions - failed),
        "first": windows[0]["start"],
        "last": windows[-1]["end"],
        "metrics": {**metrics(scored, offset), **whole.pop("matrix", {})},
        "label_delay_s": {
            "edges": [0, 3600, 7200, 14400, 86400],
            "counts": [
                scored // 2,
                scored // 4,
                scored // 8,
                scored - scored // 2 - scored // 4 - scored // 8,
            ],
            "median": 3600.0 if scored else None,
        },
        "windows": windows,
        **whole,
    }


def report_dict(task: str, versions: dict[str, Any], classes: list[str] | None) -> dict[str, Any]:
    return {
        "schema": 1,
        "generated": iso(UNTIL + datetime.timedelta(minutes=5)),
        "engine": "duckdb",
        "model": "churn<&>",
        "task": task,
        "classes": classes,
        "rules": {
            "policy": "last",
            "max_delay_s": int(MAX_DELAY.total_seconds()),
            "window": "day",
            "since": None,
            "until": iso(UNTIL),
            "min_count": MIN_COUNT,
            "confidence": 0.95,
        },
        "versions": versions,
        "diagnostics": {
            "labels": 700,
            "matched": 640,
            "orphan_labels": 60,
            "duplicate_labels": 5,
            "conflicting_labels": 3,
            "unknown_class_labels": 4,
            "keys_predicted_more_than_once": 41,
            "unlabelled_past_max_delay": 17,
            "failed_predictions": 22,
            "labelled_failed": 1,
            "capture_drops": 0,
        },
    }


CLASSES = ["no", "yes", SCRIPT]


def shares(day: int) -> dict[str, Any]:
    yes = 0.2 + 0.03 * day
    return {
        "share": {"no": 0.7 - 0.03 * day, "yes": yes, SCRIPT: 0.1},
        "mean_probability": {"no": 0.65 - 0.03 * day, "yes": yes + 0.02, SCRIPT: 0.13},
    }


def calibration(shift: float) -> dict[str, Any]:
    return {
        "positive": "top",
        "bins": [
            {"mean_predicted": p, "observed": min(1.0, p + shift), "n": 20}
            for p in (0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)
        ],
    }


def classifier_report() -> dict[str, Any]:
    """Two versions: v1 on days 0-5 (one window with too few labels), v2 on days 3-7 (its
    last two windows still waiting for labels, one of them with none yet), so four windows
    overlap and two are shaded."""
    v1 = version(
        range(6),
        [80, 75, 12, 90, 85, 60],
        classifier_metrics,
        shares,
        0.0,
        matrix={
            "confusion_matrix": {
                "labels": CLASSES,
                "counts": [[250, 20, 5], [30, 80, 3], [2, 4, 8]],
            }
        },
        calibration=calibration(0.0),
    )
    unknown = [*CLASSES, "maybe"]  # a label class the model does not know, sorted after
    v2 = version(
        range(3, 8),
        [40, 50, 45, 20, 0],
        classifier_metrics,
        shares,
        0.04,
        matrix={
            "confusion_matrix": {
                "labels": unknown,
                "counts": [[80, 9, 1, 0], [10, 40, 2, 0], [1, 1, 7, 0], [2, 1, 1, 0]],
            }
        },
        calibration=calibration(-0.05),
    )
    return report_dict("classification", {"v1": v1, "v2": v2}, CLASSES)


def spread(day: int) -> dict[str, Any]:
    mean = 10 + 0.5 * day
    return {"mean": mean, "std": 2.0, "p10": mean - 2.5, "p50": mean - 0.2, "p90": mean + 2.6}


def regressor_report() -> dict[str, Any]:
    v1 = version(
        range(4),
        [60, 55, 50, 40],
        regressor_metrics,
        spread,
        0.0,
        residuals={"edges": [-4, -2, 0, 2, 4], "counts": [10, 60, 70, 12]},
    )
    v2 = version(
        range(4, 8),
        [45, 35, 10, 0],
        regressor_metrics,
        spread,
        0.3,
        residuals={"edges": [-3, -1, 1, 3, 5], "counts": [5, 30, 40, 15]},
    )
    v2["windows"][-1] |= {  # every prediction of the window failed
        "failed": v2["windows"][-1]["predictions"],
        "distribution": dict.fromkeys(("mean", "std", "p10", "p50", "p90")),
    }
    return report_dict("regression", {"1.0": v1, "v$2$": v2}, None)


def unlabelled_report() -> dict[str, Any]:
    """Predictions and not a single label yet, as report.py writes them: metrics of no
    pairs, an empty confusion matrix, calibration and delay histogram; and a last window
    whose every prediction failed, so that it has no shares."""
    v1 = version(
        range(4),
        [0, 0, 0, 0],
        classifier_metrics,
        shares,
        0.0,
        matrix={"confusion_matrix": {"labels": CLASSES, "counts": [[0] * 3] * 3}},
        calibration={"positive": "top", "bins": []},
    )
    v1["coverage"] = 0.0
    v1["label_delay_s"] = {"edges": [], "counts": [], "median": None}
    v1["windows"][-1] |= {
        "failed": v1["windows"][-1]["predictions"],
        "distribution": {
            "share": dict.fromkeys(CLASSES),
            "mean_probability": dict.fromkeys(CLASSES),
        },
    }
    report = report_dict("classification", {"v1": v1}, CLASSES)
    report["diagnostics"] |= {"labels": 0, "matched": 0, "orphan_labels": 0}
    return report


REPORTS = {
    "classifier": classifier_report,
    "regressor": regressor_report,
    "unlabelled": unlabelled_report,
}


@functools.cache
def page_of(kind: str) -> str:
    """The page of one of the reports above, rendered once for the module."""
    return render(REPORTS[kind]())


# --- the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM, "chromium is not installed: `make browser` installs Debian's chromium"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


class Opened:
    """A rendered report in a browser page that may fetch nothing but itself."""

    def __init__(self, browser: Any, page_html: str) -> None:
        self.html = page_html
        self.refused: list[str] = []
        self.dialogs: list[str] = []
        # The page's own policy forbids any fetch; bypassed here, so that a fetch the page
        # would make is seen (and refused) by the route below.
        self.page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        self.page.route("**/*", self.serve)
        self.page.on(
            "dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss())
        )
        response = self.page.goto(REPORT_URL, wait_until="load")
        assert response is not None and response.ok

    def serve(self, route: Any) -> None:
        if route.request.url == REPORT_URL:
            route.fulfill(status=200, content_type="text/html; charset=utf-8", body=self.html)
        else:
            self.refused.append(route.request.url)
            route.abort()

    def charts(self) -> dict[str, dict[str, int]]:
        """Each chart of the page, in order, by name: its drawn marks counted by kind.
        Every chart is checked to be drawn: a visible SVG with a box, an accessible name
        and description; and every mark counted is drawn: paths with a box of their own."""
        found = self.page.evaluate(DRAWN)
        for name, chart in found.items():
            assert chart["visible"], name
            assert chart["width"] > 100 and chart["height"] > 50, (name, chart)
            assert chart["role"] == "img" and chart["title"] and chart["desc"], (name, chart)
            assert chart["blank"] == [], (name, chart["blank"])
        return {name: chart["marks"] for name, chart in found.items()}


# What the browser drew, read in one call: per <figure class="chart">, its SVG's box and
# accessible text, and its marks (<g class="mark mark-KIND">) by kind, those without a
# drawn path listed apart.
DRAWN = """() => {
  const charts = {};
  for (const figure of document.querySelectorAll("figure.chart")) {
    const svg = figure.querySelector(":scope > svg");
    const box = svg.getBoundingClientRect();
    const style = getComputedStyle(svg);
    const marks = {};
    const blank = [];
    for (const mark of svg.querySelectorAll("g.mark")) {
      const kind = [...mark.classList].find(c => c.startsWith("mark-")).slice(5);
      const drawn = mark.querySelector("path, use");
      const size = mark.getBoundingClientRect();
      if (drawn && (size.width > 0 || size.height > 0)) {
        marks[kind] = (marks[kind] || 0) + 1;
      } else {
        blank.push(kind);
      }
    }
    const labelled = (svg.getAttribute("aria-labelledby") || "").split(" ");
    const text = id => (document.getElementById(id) || {}).textContent || "";
    charts[figure.id.replace(/^chart-/, "")] = {
      visible: style.visibility !== "hidden" && style.display !== "none" && box.width > 0,
      width: box.width, height: box.height, role: svg.getAttribute("role"),
      title: text(labelled[0]).trim(), desc: text(labelled[1]).trim(), marks, blank,
    };
  }
  return charts;
}"""


@pytest.fixture
def opened(browser: Any) -> Iterator[Any]:
    pages: list[Opened] = []

    def open_report(kind: str) -> Opened:
        one = Opened(browser, page_of(kind))
        pages.append(one)
        return one

    yield open_report
    for one in pages:
        one.page.close()


METRIC_CHARTS = {
    "classification": ["accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc", "brier"],
    "regression": ["mae", "rmse", "r2", "bias"],
}


# --- the tests ------------------------------------------------------------------------


def test_a_classifiers_report_draws_every_chart_and_fetches_nothing(opened: Any) -> None:
    page = opened("classifier")
    drawn = page.charts()
    assert page.refused == []
    # per metric: a line and a band per version; the windows of Nov 7 and 8 wait for
    # labels (end + 2 days of max delay > until); v1's Nov 3 and v2's Nov 7 have too few
    over_time = {"line": 2, "band": 2, "pending": 2, "few": 2}
    assert drawn == {
        **{f"metric-{name}": over_time for name in METRIC_CHARTS["classification"]},
        "calibration": {"line": 2},
        "confusion-0": {"cell": 3 * 3},
        "confusion-1": {"cell": 4 * 4},  # v2 has labels of a class the model does not know
        "coverage": {"line": 2, "pending": 2},
        "delay": {"histogram": 2, "median": 2},
        "volume": {"line": 2, "failed": 2},
        "shares-0": {"share": len(CLASSES), "probability": len(CLASSES)},
        "shares-1": {"share": len(CLASSES), "probability": len(CLASSES)},
    }
    assert list(drawn)[:6] == [f"metric-{name}" for name in METRIC_CHARTS["classification"]]


def test_a_regressors_report_draws_its_residuals_and_the_spread_of_its_predictions(
    opened: Any,
) -> None:
    page = opened("regressor")
    drawn = page.charts()
    assert page.refused == []
    over_time = {"line": 2, "band": 2, "pending": 2, "few": 1}  # v2's Nov 7: 10 labels
    assert drawn == {
        **{f"metric-{name}": over_time for name in METRIC_CHARTS["regression"]},
        "residuals": {"histogram": 2},
        "coverage": {"line": 2, "pending": 2},
        "delay": {"histogram": 2, "median": 2},
        "volume": {"line": 2, "failed": 2},
        "distribution": {"line": 2, "median": 2, "band": 2},  # mean, p50, p10 to p90
    }
    # a version's "$" is drawn as text, not read as mathtext
    assert "v$2$" in page.page.locator("table.versions").inner_text()
    assert "v$2$" in page.page.locator("#chart-volume desc").text_content()


def test_user_text_is_shown_as_text_and_never_runs(opened: Any) -> None:
    page = opened("classifier")
    assert page.page.locator("script").count() == 0
    assert page.dialogs == []
    assert page.page.locator("h1").inner_text() == "Model quality: churn<&>"
    assert SCRIPT in page.page.locator("header").inner_text()
    assert SCRIPT in page.page.locator("#chart-shares-0 desc").text_content()
    assert page.page.title() == "Model quality: churn<&>"


def test_a_report_without_labels_says_so_and_still_shows_the_drift(opened: Any) -> None:
    page = opened("unlabelled")
    assert page.charts() == {
        "coverage": {"line": 1},
        "volume": {"line": 1, "failed": 1},
        "shares-0": {"share": len(CLASSES), "probability": len(CLASSES)},
    }
    assert page.refused == []
    quality = page.page.locator("table.quality tbody tr").all()
    assert len(quality) == len(METRIC_CHARTS["classification"])
    for row in quality:
        assert row.locator("td").inner_text() == "no labels yet"
    assert "No labels yet" in page.page.locator("#quality + p").inner_text()
    diagnostics = page.page.locator("table.diagnostics tbody tr").all()
    assert len(diagnostics) == 11
    for row in diagnostics:
        count, meaning = row.locator("td").all()
        assert count.inner_text().strip().isdigit() and meaning.inner_text().strip()


def quality_cell(page: str, metric: str) -> str:
    """The versions' quality table's cell of one metric (of the first version)."""
    table = page[page.index('<table class="quality">') :]
    found = re.search(rf"<th scope=row>{re.escape(metric)}</th><td[^>]*>(.*?)</td>", table)
    assert found is not None, metric
    return found[1]


def test_too_few_labels_are_said_and_not_given_as_a_number() -> None:
    report = unlabelled_report()
    few = version(range(2), [5, 6], classifier_metrics, shares, 0.0)
    no_auc = {"value": None, "low": None, "high": None, "n": 11, "too_few": False}
    few["metrics"]["roc_auc"] = no_auc  # e.g. one class only among the labels
    for window in few["windows"]:
        window["metrics"]["roc_auc"] = no_auc
    report["versions"] = {"v1": few}
    page = render(report)
    assert quality_cell(page, "Accuracy") == "too few (11 &lt; 30)"
    assert quality_cell(page, "ROC AUC") == "n/a (n = 11)"
    assert "No window has a value for: ROC AUC." in page
    assert 'id="chart-metric-roc_auc"' not in page
    assert 'id="chart-metric-accuracy"' in page  # its windows drawn as too few


def test_a_metric_the_page_does_not_know_is_shown_under_its_name_escaped() -> None:
    report = unlabelled_report()
    report["versions"] = {"v1": version(range(2), [40, 50], classifier_metrics, shares, 0.0)}
    odd = '<i class="x">kappa</i>'
    for data in report["versions"].values():
        data["metrics"][odd] = metric(0.5, 200)
        for window in data["windows"]:
            window["metrics"][odd] = metric(0.5, window["labelled"])
    page = render(report)
    assert quality_cell(page, escape(odd)).startswith("0.5")
    assert odd not in page
    assert 'id="chart-metric-_i_class__x__kappa__i_"' in page


def test_the_header_states_the_rules_and_lists_the_versions_in_order(opened: Any) -> None:
    page = opened("classifier")
    header = page.page.locator("header").inner_text()
    for said in (
        "Task\nclassification of no, yes, " + SCRIPT,
        "Join policy\nlast: a label with a request id joins that prediction; any other joins "
        "the latest prediction of its key in the max delay before the label's time",
        "Max delay\n2 days",
        "Window\nday",
        "Predictions from\nthe first capture to 2026-11-09 00:00 UTC",
        "Intervals\n95% percentile bootstrap; “too few” under 30 labelled pairs",
        "Engine\nduckdb",
        "Generated\n2026-11-09 00:05 UTC",
    ):
        assert said in header, said
    versions = page.page.locator("table.versions tbody tr").all()
    assert [row.locator("th").inner_text() for row in versions] == ["v1", "v2"]
    first = [cell.inner_text() for cell in versions[0].locator("td").all()]
    assert first[:4] == ["750", "12", "402", "54.5%"]
    assert page.page.locator("table.quality thead").inner_text().split() == ["Metric", "v1", "v2"]
    accuracy = page.page.locator("table.quality tbody tr").first.locator("td").all()
    assert [cell.inner_text() for cell in accuracy] == [
        "0.900\n0.860 to 0.930, n = 402",
        "0.860\n0.820 to 0.890, n = 155",
    ]


def test_the_page_refers_to_nothing_outside_itself() -> None:
    page = page_of("classifier")
    assert "default-src 'none'" in page  # the browser refuses any fetch, should one slip in
    for outside in ("<script", "<link", "<img", "<iframe", "@import", "@font-face", "src="):
        assert outside not in page.lower(), outside
    assert not re.search(r"(href|url)\(?=?[\"']?(https?:|//)", page)


def test_the_same_report_renders_the_same_page() -> None:
    assert render(regressor_report()) == page_of("regressor")
