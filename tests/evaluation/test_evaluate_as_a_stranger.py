"""keyed-evaluate as a stranger runs it: the mistakes one makes first (a typo in the path,
--since after --until, a label file whose keys are of another type than the predictions')
answered with a message that says what to do."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from captures import at, ensure_metrics, prediction, write_predictions

from keyed_serving.evaluation.cli import main

ensure_metrics()
UNTIL = ["--until", at(100).isoformat()]


def evaluate(*args: object, tmp_path: Path) -> int:
    out = ["--out", str(tmp_path / "report.html"), "--json", str(tmp_path / "report.json")]
    return main([*map(str, args), *out])


def test_since_after_until_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "capture"
    write_predictions(root, [prediction("a", 1)])
    since, until = at(50).isoformat(), at(10).isoformat()
    assert evaluate(root, "--since", since, "--until", until, tmp_path=tmp_path) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "--since" in said and "after --until" in said


def test_a_capture_directory_that_does_not_exist_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate(tmp_path / "captuer", *UNTIL, tmp_path=tmp_path) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "no such directory" in said


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.slow)])
def test_labels_whose_keys_were_predicted_with_another_type_are_pointed_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str
) -> None:
    """Predictions keyed by JSON integers, labels from a CSV (keys read as text): every
    label is an orphan, by the rule that 1 and "1" are different keys. The report keeps
    that rule; the terminal says why the labels met nothing, and what to do."""
    root = tmp_path / "capture"
    write_predictions(root, [prediction(key, 1) for key in range(1, 40)])
    labels = tmp_path / "outcomes.csv"
    pd.DataFrame({"id": range(1, 40), "y": ["yes"] * 39}).to_csv(labels, index=False)
    args = ["--labels", labels, "--key", "id", "--label", "y", "--engine", engine]
    assert evaluate(root, *args, *UNTIL, tmp_path=tmp_path) == 0
    said = capsys.readouterr().err
    assert "39 orphan label(s)" in said and "'1' (str)" in said and "(int)" in said
    assert said.count("\n") == 1


def test_no_key_type_note_when_the_types_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "capture"
    write_predictions(root, [prediction(str(key), 1) for key in range(1, 40)])
    labels = tmp_path / "outcomes.csv"
    pd.DataFrame({"id": range(1, 45), "y": ["yes"] * 44}).to_csv(labels, index=False)
    args = ["--labels", labels, "--key", "id", "--label", "y"]
    assert evaluate(root, *args, *UNTIL, tmp_path=tmp_path) == 0
    assert capsys.readouterr().err == ""


@pytest.fixture
def regressor_capture(tmp_path: Path) -> Path:
    root = tmp_path / "capture"
    rows = [prediction(f"k{i}", 1, float(i)) for i in range(40)]
    write_predictions(root, rows, task="regression", classes=None)
    return root


@pytest.mark.parametrize("cell", ["inf", "-inf"])
def test_a_regressors_label_file_with_an_infinity_is_refused_naming_the_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], regressor_capture: Path, cell: str
) -> None:
    """POST /labels refuses a label that is not a finite number; a file's was scored away
    silently (39 of 40 pairs, nothing counted)."""
    labels = tmp_path / "outcomes.csv"
    values = [cell if i == 3 else str(i + 0.5) for i in range(40)]
    labels.write_text("id,y\n" + "\n".join(f"k{i},{v}" for i, v in enumerate(values)) + "\n")
    args = ["--labels", labels, "--key", "id", "--label", "y"]
    assert evaluate(regressor_capture, *args, *UNTIL, tmp_path=tmp_path) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "row 3" in said and "finite" in said


def test_a_regressors_label_column_read_as_text_names_the_cell_that_made_it_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], regressor_capture: Path
) -> None:
    """One "nan" in a CSV column makes the column text (only an empty cell is missing): the
    message named row 0's '0.5' as not a number."""
    labels = tmp_path / "outcomes.csv"
    values = ["nan" if i == 3 else str(i + 0.5) for i in range(40)]
    labels.write_text("id,y\n" + "\n".join(f"k{i},{v}" for i, v in enumerate(values)) + "\n")
    args = ["--labels", labels, "--key", "id", "--label", "y"]
    assert evaluate(regressor_capture, *args, *UNTIL, tmp_path=tmp_path) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "row 3: 'nan'" in said and "'0.5'" not in said


@pytest.mark.parametrize("option", ["--out", "--json", "--joined"])
def test_an_output_in_a_directory_that_does_not_exist_is_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], regressor_capture: Path, option: str
) -> None:
    outputs = {
        "--out": tmp_path / "report.html",
        "--json": tmp_path / "report.json",
        "--joined": tmp_path / "pairs.parquet",
    }
    outputs[option] = tmp_path / "no-such-dir" / "file"
    args = [str(regressor_capture), *UNTIL]
    for name, path in outputs.items():
        args += [name, str(path)]
    assert main(args) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and option in said and "no-such-dir" in said


@pytest.mark.parametrize("cell", ["06/12/2026", "1765000000", "yesterday"])
def test_a_label_time_that_is_not_iso_8601_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], regressor_capture: Path, cell: str
) -> None:
    """The README and POST /labels take ISO 8601 only; a file's 06/12/2026 was read as
    June 12 (month first), and a number as nanoseconds after 1970, without a word."""
    labels = tmp_path / "outcomes.csv"
    times = [cell if i == 2 else "2026-03-02T13:00:00Z" for i in range(40)]
    rows = [f"k{i},{i + 0.5},{t}" for i, t in enumerate(times)]
    labels.write_text("id,y,observed_at\n" + "\n".join(rows) + "\n")
    args = ["--labels", labels, "--key", "id", "--label", "y", "--time", "observed_at"]
    assert evaluate(regressor_capture, *args, *UNTIL, tmp_path=tmp_path) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "'observed_at'" in said and "ISO 8601" in said, said


def vanished(kind: str) -> Exception:
    """What a read raises when a worker's merge removed a file after it was listed."""
    gone = "/capture/predictions/model=churn/version=v1/date=2026-03-02/w1-000007.parquet"
    if kind == "duckdb":
        import duckdb

        return duckdb.IOException(f'IO Error: Cannot open file "{gone}": No such file or directory')
    return FileNotFoundError(2, "No such file or directory", gone)


@pytest.mark.parametrize("kind", ["duckdb", "pyarrow"])
def test_a_file_merged_away_while_it_is_read_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A server merges its small capture files while keyed-evaluate reads them (a file
    listed, then removed once the merged file holding its rows is in): the run reads
    again instead of ending in a traceback."""
    from keyed_serving.evaluation import cli

    root = tmp_path / "capture"
    write_predictions(root, [prediction(f"k{i}", 1) for i in range(10)])
    real, calls = cli.evaluate, []

    def once_too_soon(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise vanished(kind)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "evaluate", once_too_soon)
    assert evaluate(root, *UNTIL, tmp_path=tmp_path) == 0
    assert len(calls) == 2


def test_a_file_that_keeps_vanishing_is_said_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from keyed_serving.evaluation import cli

    root = tmp_path / "capture"
    write_predictions(root, [prediction(f"k{i}", 1) for i in range(10)])

    def always(*args: object, **kwargs: object) -> object:
        raise vanished("duckdb")

    monkeypatch.setattr(cli, "evaluate", always)
    assert evaluate(root, *UNTIL, tmp_path=tmp_path) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "try again" in said


def test_an_io_error_that_is_not_a_vanished_file_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import duckdb

    from keyed_serving.evaluation import cli

    root = tmp_path / "capture"
    write_predictions(root, [prediction(f"k{i}", 1) for i in range(10)])
    calls = []

    def broken(*args: object, **kwargs: object) -> object:
        calls.append(1)
        raise duckdb.IOException("IO Error: No magic bytes found at end of file")

    monkeypatch.setattr(cli, "evaluate", broken)
    with pytest.raises(duckdb.IOException):
        evaluate(root, *UNTIL, tmp_path=tmp_path)
    assert len(calls) == 1


@pytest.mark.slow
def test_keyed_evaluate_reads_a_capture_while_its_files_are_merged(tmp_path: Path) -> None:
    """The writer's merge, every 20 ms, beside keyed-evaluate: every run reads every
    prediction once (failed before: a run in three or so ended in an IOException)."""
    import json
    import threading

    import pyarrow as pa
    import pyarrow.parquet as pq

    from keyed_serving.capture.files import write_atomic

    root = tmp_path / "capture"
    for part in range(8):
        rows = [prediction(f"k{i}", 1) for i in range(part * 10, part * 10 + 10)]
        write_predictions(root, rows, name=f"part-{part}")
    [directory] = list((root / "predictions").glob("model=*/version=*/date=*"))
    stop = threading.Event()

    def merge_forever() -> None:
        merged = 0
        while not stop.is_set():
            parts = sorted(directory.glob("*.parquet"))
            merged += 1
            write_atomic(pa.concat_tables([pq.read_table(p) for p in parts]), directory,
                         f"merged-{merged}")  # fmt: skip
            for part in parts:
                part.unlink()
            stop.wait(0.02)  # a server merges once per 32 flushes; this is still far more

    merging = threading.Thread(target=merge_forever)
    merging.start()
    try:
        for _ in range(20):
            assert evaluate(root, *UNTIL, tmp_path=tmp_path) == 0
            report = json.loads((tmp_path / "report.json").read_text())
            assert report["versions"]["v1"]["predictions"] == 80
    finally:
        stop.set()
        merging.join()
