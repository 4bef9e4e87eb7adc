"""Files written whole or not at all.

.. important::
   Pure file-system operations: any thread, any process.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader, or a crash, never sees it half written:
    it is written beside, then renamed over ``path``."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)
