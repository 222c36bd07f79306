"""The API page at / as a person sees it: rendered by a real headless browser (Debian's
chromium), against a real `bentoml serve`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import served

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(default_model: str) -> Iterator[tuple[str, str]]:
    with served(MODEL_TAG=default_model) as url:
        yield url, default_model


def rendered(url: str, *extra: str) -> str:
    """The page's DOM after its scripts ran (Swagger UI fetches and renders /docs.json)."""
    assert CHROMIUM, "chromium is not installed: `make test` installs it (Debian's chromium)"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                # Lets the page's scripts and its fetch of /docs.json finish before the dump.
                "--virtual-time-budget=15000",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    return done.stdout


def test_the_page_names_this_service_and_its_model_not_bentomls_template(
    server: tuple[str, str], tmp_path: Path
) -> None:
    url, tag = server
    name, version = tag.split(":")
    dom = rendered(url + "/", "--dump-dom")
    assert f"<title>Keyed prediction: {name}" in dom
    assert f"Keyed prediction: {name}" in dom.split("</title>", 1)[1]  # the rendered heading
    assert version in dom
    for said in ("key", "/predict", "Open Inference Protocol", "per_instance", "README"):
        assert said in dom, said
    for template in ("This is a Machine Learning Service created with BentoML", ":dev", ">None<"):
        assert template not in dom, template
    assert "googletagmanager" not in dom and "BentoML Team" not in dom
    assert 'id="keyed-title"' in dom  # shows the title BentoML's stylesheet hides
    shot = tmp_path / "page.png"
    rendered(url + "/", f"--screenshot={shot}", "--window-size=1280,1400")
    assert shot.stat().st_size > 10_000  # something was drawn


def test_the_page_links_to_the_users_guide(server: tuple[str, str]) -> None:
    url, _ = server
    readme = httpx.get(url + "/readme", timeout=30)
    assert readme.status_code == 200 and "# keyed-serving" in readme.text
    assert 'href="./readme"' in rendered(url + "/", "--dump-dom")
