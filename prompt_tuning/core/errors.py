"""The one exception type for user mistakes, and how the commands print their help.

A `UserError` is something the user can fix (a bad config key, a missing folder, a wrong model name). The CLI
prints its message without a traceback; anything else is a bug and keeps its traceback.
"""

import argparse
import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input; the message names the culprit and the fix."""


def close_matches(word: str, options: Iterable[str], n: int = 5) -> str:
    """`"; did you mean 'a', 'b'?"` for the options closest to `word`, or `""` when none is close."""
    matches = difflib.get_close_matches(str(word), [str(o) for o in options], n=n, cutoff=0.5)
    return f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The commands' help: epilogs as written; each option's default unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text
