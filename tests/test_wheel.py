"""The package as a user installs it: a wheel built from a copy of the sources, installed
into a new virtual environment with no source tree on its path, first without extras, then
with the ``testing`` extra (which brings the ``demo`` extra). pip takes the dependencies
from its index (or its cache), as ``make venv`` does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the wheel is built from: the packages and the files that setup.cfg reads.
SOURCES = (
    "nexus_writer",
    "sync_primitives",
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "README.rst",
    "LICENSE",
)


def _run(
    argv: list[str], cwd: Path, timeout: float = 240.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")
    }
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    _run([*pip_wheel, "-w", str(dist), "."], source)
    (built,) = dist.glob("nexus_writer-*.whl")
    return built


def test_the_wheel_carries_every_module_and_py_typed(wheel: Path) -> None:
    sources = {
        str(path.relative_to(ROOT))
        for package in ("nexus_writer", "sync_primitives")
        for path in (ROOT / package).rglob("*")
        if path.suffix in (".py", ".typed") and "__pycache__" not in path.parts
    }
    with zipfile.ZipFile(wheel) as archive:
        carried = {name for name in archive.namelist() if not name.startswith("nexus_writer-")}
    assert carried == sources


@pytest.mark.timeout(600)
def test_the_wheel_installs_and_runs_without_then_with_extras(wheel: Path, tmp_path: Path) -> None:
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(environment)
    python = environment / "bin" / "python"
    bin_dir = environment / "bin"
    work = tmp_path / "work"  # the commands' working directory: no source tree in sight
    work.mkdir()

    _run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], work)
    where = _run(
        [
            str(python),
            "-c",
            "import pathlib, nexus_writer, sync_primitives\n"
            "for package in (nexus_writer, sync_primitives):\n"
            "    print(pathlib.Path(package.__file__).parent)\n",
        ],
        work,
    )
    for package in where.stdout.split():
        assert Path(package).is_relative_to(environment), where.stdout
        assert (Path(package) / "py.typed").is_file(), f"{package} has no py.typed"

    help_text = _run([str(bin_dir / "nexus-writer"), "--help"], work)
    for command in ("run", "simulate", "demo", "register", "event-monitor"):
        assert command in help_text.stdout
    for argv, extra in (
        ([str(bin_dir / "NexusWriterService"), "--help"], "tango"),
        ([str(bin_dir / "nexus-writer"), "demo", "--root", str(work / "data")], "demo"),
    ):
        refused = _run(argv, work, check=False)
        assert refused.returncode == 2, refused.stderr
        assert f"pip install 'nexus-writer[{extra}]'" in refused.stderr, refused.stderr
        assert "No module named" in refused.stderr and "Traceback" not in refused.stderr

    # The testing extra: the demo extra and pytest (docs/testing.md).
    _run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[testing]"], work)
    service_help = _run([str(bin_dir / "NexusWriterService"), "--help"], work)
    assert "the server's instance name" in service_help.stdout
    demo = _run([str(bin_dir / "nexus-writer"), "demo", "--root", str(work / "data")], work)
    assert "demo/nexus/writer is ON" in demo.stdout
    assert "6 written, 0 failed" in demo.stdout
    assert "nxcheck: 0 error(s)" in demo.stdout

    # docs/testing.md's test module, as a user saves and runs it: the kit's fixtures come
    # from the installed plugin.
    guide = (ROOT / "docs" / "testing.md").read_text()
    (module,) = re.findall(r"```python test_my_scans.py\n(.*?)```", guide, re.S)
    (work / "test_my_scans.py").write_text(module)
    tested = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], work)
    assert "2 passed" in tested.stdout, tested.stdout
