"""The project's base error.

Every error that a user can cause (bad input, bad configuration, a refused operation)
derives from :class:`IncisiveLabError`; the command line prints its message without a
traceback and exits with status 2.
"""

from __future__ import annotations


class IncisiveLabError(Exception):
    """An error caused by input, configuration or policy, with a message meant for people."""
