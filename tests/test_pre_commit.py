"""The pre-commit hooks run the same checks as ``make lint typecheck``: in a git repository
made from a copy of the project, they pass on the project as it is and fail on a commit
that ``make lint`` or ``make typecheck`` would refuse."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Not copied: environments, caches, outputs (what .gitignore keeps out of a commit).
_IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".*_cache",
    ".hypothesis", "demo-data", "*.h5", ".coverage*",
)  # fmt: skip


def _pre_commit(repository: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "VENV": str(Path(sys.prefix)),  # make lint/typecheck use this environment
        "PRE_COMMIT_HOME": str(home),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }
    pre_commit = Path(sys.executable).with_name("pre-commit")
    return subprocess.run(
        [str(pre_commit), "run", "--all-files", "--color", "never"],
        cwd=repository,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _git(repository: Path, *argv: str) -> None:
    subprocess.run(["git", *argv], cwd=repository, check=True, capture_output=True, timeout=60)


@pytest.mark.timeout(300)
def test_the_hooks_pass_the_project_and_refuse_what_make_lint_and_typecheck_refuse(
    tmp_path: Path,
) -> None:
    if shutil.which("git") is None:
        pytest.fail("git is needed: pre-commit works on a git repository")
    repository = tmp_path / "project"
    shutil.copytree(ROOT, repository, ignore=_IGNORED)
    for metadata in ("setup.py", "setup.cfg", "pyproject.toml"):  # older than VENV's stamp:
        os.utime(repository / metadata, (0, 0))  # make must not install the copy into it
    _git(repository, "init", "--quiet")
    _git(repository, "add", "--all")

    clean = _pre_commit(repository, tmp_path / "pre-commit-home")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "(make lint)" in clean.stdout and "(make typecheck)" in clean.stdout
    assert clean.stdout.count("Passed") == 2, clean.stdout

    spoilt = repository / "nexus_writer" / "extras.py"
    spoilt.write_text(
        spoilt.read_text() + "\n\nimport os\n\n\ndef untyped(value):\n    return value\n"
    )
    _git(repository, "add", "--all")
    refused = _pre_commit(repository, tmp_path / "pre-commit-home")
    assert refused.returncode != 0
    assert refused.stdout.count("Failed") == 2, refused.stdout
    assert "F401" in refused.stdout or "E402" in refused.stdout, refused.stdout  # ruff
    assert "Function is missing a type annotation" in refused.stdout, refused.stdout  # mypy
