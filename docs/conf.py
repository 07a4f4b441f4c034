"""Sphinx configuration for pvae's documentation (build: sphinx-build -W -b html docs docs/_build)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "pvae"
author = "pvae developers"
copyright = "2026, pvae developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode"]
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_mock_imports = []
napoleon_google_docstring = True
nitpicky = False
suppress_warnings = ["autodoc.import_object"]
html_theme = "alabaster"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
