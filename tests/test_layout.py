"""The package's parts and their import rules (the import-linter contracts in pyproject.toml).

`make lint` runs the contracts on the tree; these tests show that each rule the layout
promises is one of them, by breaking it in a copy of the package and watching it fail."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support import ROOT

LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # cwd first on sys.path (lint-imports puts it there): the copy, not the installed package
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )


def status_of(report: str, contract: str) -> str:
    """KEPT or BROKEN, for the contract whose name starts with ``contract`` (the report wraps
    long names over lines)."""
    words = " ".join(report.split())
    after = words[words.index(contract) :]
    return min(("KEPT", "BROKEN"), key=lambda status: after.find(f" {status}") % len(after))


@pytest.fixture
def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "keyed_serving",
        tmp_path / "keyed_serving",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_rules_hold_for_the_tree(copy_of_the_package: Path) -> None:
    out = lint_imports(copy_of_the_package)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # only service.py imports the request path
        ("offline/spark.py", "from keyed_serving.serving import answers", "Only service.py"),
        ("__init__.py", "from keyed_serving.serving import http", "Only service.py"),
        # the client imports neither the server nor the model, nor what they need
        ("client/cli.py", "from keyed_serving.model import spec", "The client needs"),
        ("client/keyed_client.py", "import sklearn", "The client needs"),
        ("client/keyed_client.py", "import bentoml", "The client needs"),
        ("client/cli.py", "import lightgbm", "The client needs"),
        # through the shared base counts too
        ("client/cli.py", "from keyed_serving import schemas", "The client needs"),
        # the model never imports serving, client or offline
        ("model/store.py", "from keyed_serving.client import cli", "The model knows nothing"),
        ("model/spec.py", "from keyed_serving.offline import spark", "The model knows nothing"),
        ("model/predicting.py", "from keyed_serving.serving import v2", "The model knows"),
        # the shared base imports none of the parts
        ("keys.py", "from keyed_serving.model import spec", "Parts over the shared base"),
        ("tables.py", "from keyed_serving.client import cli", "Parts over the shared base"),
        # a new module at the top belongs to a layer before anything checks it
        ("helpers.py", "from keyed_serving.model import store", "Parts over the shared base"),
        # the parts beside each other stay apart
        ("serving/answers.py", "from keyed_serving.offline import spark", "Parts over the"),
    ],
)
def test_an_import_against_the_rules_fails_lint(
    copy_of_the_package: Path, module: str, line: str, broken: str
) -> None:
    path = copy_of_the_package / "keyed_serving" / module
    before = path.read_text() if path.exists() else ""
    path.write_text(before + f"\n{line}  # noqa\n")
    out = lint_imports(copy_of_the_package)
    assert out.returncode != 0, out.stdout
    assert status_of(out.stdout, broken) == "BROKEN", out.stdout


def test_the_client_imports_neither_scikit_learn_nor_bentoml() -> None:
    """A client machine needs neither: `import keyed_serving.client` (and keyed-score's module,
    and the top-level names a user reaches the client by) load none of them."""
    heavy = ("sklearn", "bentoml", "keyed_serving.serving", "keyed_serving.model", "pyspark")
    script = (
        "import sys, keyed_serving, keyed_serving.client, keyed_serving.client.cli\n"
        "keyed_serving.KeyedClient\n"
        f"heavy = {heavy!r}\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_public_names_stay_where_users_import_them() -> None:
    import keyed_serving
    from keyed_serving.client import KeyedClient, ScoringError
    from keyed_serving.client.keyed_client import KeyedClient as Defined
    from keyed_serving.model.importing import save_model
    from keyed_serving.offline.spark import score_spark

    assert keyed_serving.KeyedClient is KeyedClient is Defined
    assert keyed_serving.ScoringError is ScoringError
    assert keyed_serving.save_model is save_model
    assert keyed_serving.score_spark is score_spark
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = keyed_serving.nothing


def test_no_script_hides_a_standard_library_module() -> None:
    """A script runs with its own folder first on sys.path (bench/), and pytest puts each
    test folder there too: a file named like a standard module hides it from every import
    (bench/profile.py hid `profile` from cProfile, so pyspark failed to import in
    bench/spark_scoring.py)."""
    scripts = [*(ROOT / "bench").glob("*.py"), *(ROOT / "tests").rglob("*.py")]
    hiding = sorted(
        str(path.relative_to(ROOT)) for path in scripts if path.stem in sys.stdlib_module_names
    )
    assert hiding == []


@pytest.mark.slow
def test_the_wheel_carries_every_module_of_the_package(copy_of_the_package: Path) -> None:
    """`pip install .` (not editable) installs every part: setuptools finds the folders. Built
    from a copy, so that no build/ or egg-info left in the checkout fills the gaps; pip's
    cache stays out of it too."""
    shutil.copy(ROOT / "README.md", copy_of_the_package / "README.md")
    dist = copy_of_the_package / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q"]
    subprocess.run(
        [*pip_wheel, "-w", str(dist), str(copy_of_the_package)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = dist.glob("keyed_serving-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = {name for name in archive.namelist() if name.endswith(".py")}
    modules = {path.relative_to(ROOT).as_posix() for path in ROOT.glob("keyed_serving/**/*.py")}
    assert packed == modules


def test_only_service_py_imports_the_request_path_from_outside_the_package() -> None:
    """lint-imports sees only the package: the scripts beside it are read here. The bench's
    keyless copy of the service is the one other entry allowed."""
    allowed = {"service.py", "bench/unkeyed_service.py"}
    bench = [
        path
        for path in (ROOT / "bench").rglob("*.py")
        # the peers' virtual environments (`make bench-peers`) are not the bench's code
        if not any(part.startswith(".venv") for part in path.relative_to(ROOT).parts)
    ]
    scripts = [*ROOT.glob("*.py"), *bench]
    importers = set()
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(name.startswith("keyed_serving.serving") for name in names):
                importers.add(path.relative_to(ROOT).as_posix())
    assert "service.py" in importers  # the scan sees the one that must be there
    assert importers <= allowed, importers - allowed


def test_every_bench_script_imports_and_names_modules_that_exist(default_model: str) -> None:
    """The bench is not run by CI: a moved module must not leave a script behind. Each
    script imports, and every keyed_serving name any of them imports (in a function too)
    exists where it says. A script that imports service.py needs the default model in the
    store (a start without its model stops), whichever test ran first."""
    scripts = sorted((ROOT / "bench").glob("*.py"))
    names = [path.stem for path in scripts]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, sys\nsys.path[:0] = ['bench', '.']\n"
            f"for name in {names!r}: importlib.import_module(name)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    missing = []
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keyed_serving"):
                module = importlib.import_module(node.module or "")
                missing += [
                    f"{path.name}: {node.module}.{alias.name}"
                    for alias in node.names
                    if not hasattr(module, alias.name)
                ]
    assert missing == []
