"""Warnings that point at the line of the user's code that called the package.

:func:`warn` gives ``warnings.warn`` the stack level of the first frame outside
``sklearn_cim`` (as Python 3.12's ``skip_file_prefixes`` would), however deep
inside the package the warning is raised: a warning from ``fit`` names the
caller's ``fit(...)`` line, not a line of this package.
"""

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message, category):
    """``warnings.warn(message, category)`` at the caller of the package."""
    level, frame = 2, sys._getframe(1)  # 1 is this function, 2 its caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
