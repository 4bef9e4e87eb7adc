"""Shared by the benchmark scripts: medians, percentiles and the sections of docs/benchmarks.md.

Each script owns one section, between ``<!-- NAME: start -->`` and ``<!-- NAME: end -->``,
and replaces only that section.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(path: Path, name: str, body: str) -> None:
    """Replace section ``name`` of ``path``, or append it."""
    start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def report(section: str, description: str, measure: Callable[[], str]) -> None:
    """The command line of a benchmark script: run ``measure`` (which returns the section's
    Markdown, without its date line), print it, and with ``--write FILE`` store it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--write", type=Path, help="update this Markdown file's section")
    args = parser.parse_args()
    body = f"Measured {time.strftime('%Y-%m-%d')} with `make bench`: " + measure()
    print(body)
    if args.write:
        write_section(args.write, section, body)
        print(f"\nwrote {args.write}")
