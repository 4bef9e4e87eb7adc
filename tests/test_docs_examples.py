"""Every Python example in README.rst and docs/ runs as a program and succeeds."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_python

_MARKDOWN_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
_RST_BLOCK = re.compile(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)")


def _examples() -> list[tuple[str, str]]:
    found = []
    readme = (ROOT / "README.rst").read_text()
    for number, code in enumerate(_RST_BLOCK.findall(readme), start=1):
        found.append((f"README.rst#{number}", textwrap.dedent(code)))
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for number, code in enumerate(_MARKDOWN_BLOCK.findall(doc.read_text()), start=1):
            found.append((f"{doc.name}#{number}", code))
    return found


@pytest.mark.parametrize(("name", "code"), _examples(), ids=[n for n, _ in _examples()])
def test_example_runs(name: str, code: str) -> None:
    run = run_python(code, 60, cwd=ROOT)
    assert run.returncode == 0, f"{name} failed:\n{run.stdout}\n{run.stderr}"


_TEST_MODULE = re.compile(r"```python (test_\w+\.py)\n(.*?)```", re.S)


def _test_modules() -> list[tuple[str, str]]:
    """The test modules that docs/*.md give whole (```python test_name.py): name, code."""
    return [
        (name, code)
        for doc in sorted((ROOT / "docs").glob("*.md"))
        for name, code in _TEST_MODULE.findall(doc.read_text())
    ]


@pytest.mark.timeout(240)
def test_the_test_modules_of_the_docs_pass_as_they_stand(tmp_path: Path) -> None:
    """docs/testing.md's example, saved as its name says and run with plain pytest: the
    kit's fixtures come from the installed plugin, nothing else."""
    modules = _test_modules()
    assert [name for name, _ in modules] == ["test_my_scans.py"]
    for name, code in modules:
        (tmp_path / name).write_text(code)
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name],
            check=False,
            capture_output=True,
            text=True,
            timeout=230,
            cwd=tmp_path,
        )
        assert run.returncode == 0, f"{name} failed:\n{run.stdout}\n{run.stderr}"
        assert f"{code.count(chr(10) + 'def test_')} passed" in run.stdout, run.stdout
