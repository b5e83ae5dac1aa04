"""Bug #9.7: the distribution name ``qcompiler`` is taken on PyPI; ours is ``qcompiler-llm``
and no hint may send users to ``pip install 'qcompiler[...]'``."""

import re
import sys
from pathlib import Path

import pytest

from qcompiler.install_hint import DISTRIBUTION, EXTRAS, install_hint

ROOT = Path(__file__).resolve().parents[1]

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11") \
    if sys.version_info >= (3, 11) else pytest.importorskip("tomli", reason="reads pyproject.toml")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_distribution_name_import_name_and_command():
    project = _pyproject()["project"]
    assert project["name"] == DISTRIBUTION == "qcompiler-llm"
    assert project["scripts"] == {"qcompiler": "qcompiler.cli:main"}
    assert _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"] == ["qcompiler*"]


def test_hinted_extras_exist_with_their_packages():
    extras = _pyproject()["project"]["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        names = {re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0] for req in extras[extra]}
        assert set(packages) <= names, (extra, packages, names)
    assert install_hint("tools", "matplotlib") == \
        "pip install matplotlib  (or, in a qcompiler clone: pip install -e '.[tools]')"


def test_no_hint_installs_the_other_project():
    wrong = re.compile(r"""pip install +['"]?qcompiler\[""")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "qcompiler").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if wrong.search(line) or "'qcompiler[" in line]
    assert hits == []
