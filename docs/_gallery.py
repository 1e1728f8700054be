"""Command-line arguments of the gallery's examples when Sphinx-Gallery runs them.

Referenced by name from ``conf.py`` (``reset_argv``), so the Sphinx
configuration stays picklable. ``SKLEARN_CIM_GALLERY_ARGS="--quick"`` runs every
example with its tiny settings (seconds instead of minutes).
"""

import os
import shlex


def reset_argv(gallery_conf, script_vars):
    """Extra ``sys.argv`` entries for every executed example."""
    return shlex.split(os.environ.get("SKLEARN_CIM_GALLERY_ARGS", ""))
