"""Sphinx configuration of the sklearn_cim documentation.

Build (the gallery is not executed by default, as in CI)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

With the examples executed (minutes on 2 CPU cores)::

    sphinx-build -b html -D plot_gallery=1 docs docs/_build/html

``SKLEARN_CIM_GALLERY_ARGS="--quick"`` passes those arguments to every example
when it is executed (their tiny settings: seconds instead of minutes).
"""

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy

import sklearn_cim  # noqa: E402

project = "sklearn_cim"
author = "sklearn_cim developers"
copyright = "sklearn_cim developers"
version = release = sklearn_cim.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
html_static_path = ["_static"]
html_css_files = ["custom.css"]

# -- autodoc / autosummary / numpydoc ---------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"
numpydoc_show_class_members = False  # autosummary lists members; avoids duplicate toctrees
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Offline build: no inventories are fetched, so intersphinx stays empty.
intersphinx_mapping = {}

# -- sphinx-gallery ----------------------------------------------------------
sys.path.insert(0, str(DOCS))  # _gallery.reset_argv, named by string below

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    # Not executed unless asked (-D plot_gallery=1): the examples take minutes.
    "plot_gallery": "False",
    "reset_argv": "_gallery.reset_argv",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}

# -- HTML --------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"sklearn_cim {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
# Pages without sub-pages: no empty "Section Navigation" column.
html_sidebars = {page: [] for page in ("index", "getting_started", "results", "citation", "api",
                                         "development")}


# -- Figures drawn from the committed benchmark results ----------------------
def _make_figures(app):
    subprocess.run([sys.executable, str(DOCS / "make_figures.py")], check=True)


# scikit-learn's generated ``set_*_request`` methods: their docstrings link into
# scikit-learn's own docs (glossary, user guide), which this offline build cannot
# resolve; their use is described in the user guide (metadata routing).
def _skip_metadata_request_methods(app, what, name, obj, skip, options):
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("builder-inited", _make_figures)
    app.connect("autodoc-skip-member", _skip_metadata_request_methods)
