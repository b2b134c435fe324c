"""Sphinx configuration of the bayesvae site: furo, MyST Markdown pages, autodoc for the API, the CLI reference
generated from the parser, and a gallery of tutorials executed at build time (sphinx-gallery).

No network is needed: no intersphinx, no remote images, no MathJax (equations are written in Unicode).
Build with ``make docs`` (warnings are errors).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(DOCS))  # tutorial_order
# The tutorials' models are small: one thread each is several times faster than two threads competing for two
# cores (measured: a VAEDensity fit on breast cancer, 5 s against 75 s on the shared 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")

project = "bayesvae"
author = "the bayesvae developers"
copyright = "2026, the bayesvae developers"  # noqa: A001 - Sphinx's name
from bayesvae import __version__ as release  # noqa: E402

version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "tutorials/README.txt", "tutorials/*.py", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]
suppress_warnings: list[str] = []

html_theme = "furo"
html_title = f"bayesvae {release}"
html_static_path = ["_static"] if (DOCS / "_static").is_dir() else []
html_show_sourcelink = False
html_css_files = ["bayesvae.css"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Tutorials: the files named plot_*.py are executed at every build (each within a minute on 2 cores, no download);
# the others (MNIST, GPU) are rendered with their code, not run.
TUTORIAL_LIMIT_S = float(os.environ.get("BAYESVAE_TUTORIAL_LIMIT_S", "60"))
sphinx_gallery_conf = {
    "examples_dirs": ["tutorials"],
    "gallery_dirs": ["gallery"],
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "tutorial_order.key",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "reset_modules": ("matplotlib",),
    "min_reported_time": 0,
    "write_computation_times": True,
    "show_memory": False,
    "plot_gallery": "True",
}


def _check_cli_reference(app) -> None:
    """The CLI page is the parser's own reference: docs/cli.md must equal flags.reference_markdown(build_parser())."""
    from bayesvae import cli, flags

    expected = flags.reference_markdown(cli.build_parser())
    if (DOCS / "cli.md").read_text() != expected:
        from sphinx.util import logging

        logging.getLogger(__name__).warning(
            "docs/cli.md differs from flags.reference_markdown(cli.build_parser()); regenerate it: python -c "
            "\"from bayesvae import cli, flags; open('docs/cli.md', 'w').write(flags.reference_markdown("
            "cli.build_parser()))\"")


def _check_tutorial_times(app, exception) -> None:
    """Every executed tutorial ran within TUTORIAL_LIMIT_S seconds (sphinx-gallery's own timing)."""
    if exception is not None:
        return
    from sphinx.util import logging

    log = logging.getLogger(__name__)
    for page in sorted((DOCS / "gallery").glob("plot_*.rst")):
        match = re.search(r"\*\*Total running time of the script:\*\* \(\s*(\d+) minutes\s+([\d.]+) seconds\)",
                          page.read_text())
        if match is None:
            log.warning(f"{page.name}: no running time found")
            continue
        seconds = 60 * int(match.group(1)) + float(match.group(2))
        if seconds > TUTORIAL_LIMIT_S:
            log.warning(f"tutorial {page.stem} ran {seconds:.1f} s, over the limit of {TUTORIAL_LIMIT_S:.0f} s")


def setup(app):
    app.connect("builder-inited", _check_cli_reference)
    app.connect("build-finished", _check_tutorial_times)
