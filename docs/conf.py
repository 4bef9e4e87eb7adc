"""Sphinx configuration of ``make docs``: the guides of docs/ (Markdown, through MyST) and
the API reference, built from the docstrings. Warnings are errors (``make docs`` runs
sphinx-build with -W)."""

from __future__ import annotations

import nexus_writer

project = "nexus-writer"
author = "the nexus-writer developers"
copyright = "2026, the nexus-writer developers"
release = nexus_writer.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Links between the Markdown guides ("[protocol](protocol.md)") become document links.
myst_heading_anchors = 3
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

html_theme = "alabaster"
html_title = f"nexus-writer {release}"
