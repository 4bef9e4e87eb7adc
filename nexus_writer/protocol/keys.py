"""Redis key names of the protocol: the one place that spells them.

.. important::
   Plain functions and frozen data: usable from any thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import UnsupportedProtocolError
from .model import PROTOCOL_MAJOR, PROTOCOL_VERSION

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
DEFAULT_PREFIX = "nxw"


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients may return bytes or str)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def check_name(kind: str, name: str) -> str:
    """Session names and prefixes go into keys: letters, digits, ``_``, ``.``, ``-`` only.

    Raises:
        ValueError: ``name`` has another character or is empty.
    """
    if not _NAME.match(name):
        raise ValueError(f"{kind} {name!r} may only have letters, digits, '_', '.' and '-'")
    return name


@dataclass(frozen=True)
class Keys:
    """The key names under one ``prefix`` (one deployment may host several)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_name("prefix", self.prefix)

    @property
    def protocol(self) -> str:
        """String key: the protocol version of everything under this prefix."""
        return f"{self.prefix}:protocol"

    def check_version(self, client: Any, claim: bool = False) -> None:
        """Check the protocol version stored under this prefix; ``claim`` stores ours if
        there is none yet (publishers do).

        Raises:
            UnsupportedProtocolError: another major version is stored there.
        """
        if claim:
            client.set(self.protocol, PROTOCOL_VERSION, nx=True)
        found = client.get(self.protocol)
        if found is not None and text(found).split(".")[0] != str(PROTOCOL_MAJOR):
            raise UnsupportedProtocolError(
                f"prefix {self.prefix!r} holds data of protocol {text(found)}; this program "
                f"knows {PROTOCOL_MAJOR}.x: use another prefix, or a matching version"
            )

    def session_scans(self, session: str) -> str:
        """Stream: one entry per new scan of ``session``."""
        return f"{self.prefix}:session:{check_name('session', session)}:scans"

    def session_counter(self, session: str) -> str:
        """Integer key: the last scan number given in ``session``."""
        return f"{self.prefix}:session:{check_name('session', session)}:number"

    def session_writer(self, session: str) -> str:
        """String key: the lease of the writer service that writes ``session`` (only
        writer services touch it; ``<this>:term`` counts its terms)."""
        return f"{self.prefix}:session:{check_name('session', session)}:writer"

    def scan(self, session: str, uid: str) -> str:
        """String key: the scan document (JSON). Also the stem of the scan's streams."""
        return f"{self.prefix}:scan:{check_name('session', session)}:{uid}"

    @staticmethod
    def events(scan_key: str) -> str:
        """Stream: state changes and comments of the scan."""
        return f"{scan_key}:events"

    @staticmethod
    def channel(scan_key: str, index: int) -> str:
        """Stream: the data of channel number ``index`` of the scan."""
        return f"{scan_key}:ch:{index}"
