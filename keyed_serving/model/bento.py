"""The bentofile for the served model: ``bentofile.yaml`` with the packages the model was
pickled with (scikit-learn, LightGBM, XGBoost, ...) pinned to their major.minor, so that
the bento's container can load it (``make build``; see ``check_versions``).

python -m keyed_serving.model.bento bentofile.yaml OUT.yaml   # for MODEL_TAG's model
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from keyed_serving.model.store import PORTABLE_PACKAGES, recorded_packages


def model_requirements(stored: Any) -> dict[str, str]:
    """Distribution name -> requirement (``lightgbm==4.7.*``) for the stored model."""
    requirements = {}
    for name, version in recorded_packages(stored).items():
        if name not in PORTABLE_PACKAGES:
            major_minor = ".".join(version.split(".")[:2])
            requirements[_canonical(name)] = f"{name}=={major_minor}.*"
    return requirements


def bentofile_for(stored: Any, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a parsed bentofile) with the model's packages replacing the project's own
    range for the same package, or added."""
    needed = model_requirements(stored)
    packages = []
    for requirement in base.get("python", {}).get("packages", []):
        name = _canonical(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])
        packages.append(needed.pop(name, requirement))
    packages.extend(needed.values())
    return {**base, "python": {**base.get("python", {}), "packages": packages}}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str] | None = None) -> int:
    import bentoml

    from keyed_serving.settings import DEFAULT_MODEL_TAG, get_settings

    source, out = argv if argv is not None else sys.argv[1:]
    stored = bentoml.models.get(get_settings().model_tag or DEFAULT_MODEL_TAG)
    base = yaml.safe_load(Path(source).read_text())
    header = (
        f"# Generated from {source} for {stored.tag} by keyed_serving.model.bento: do not edit.\n"
    )
    Path(out).write_text(header + yaml.safe_dump(bentofile_for(stored, base), sort_keys=False))
    print(f"{out}: {source} for {stored.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
