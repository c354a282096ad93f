"""The `--help` formatter every wit command uses."""
from __future__ import annotations

import argparse


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" where it tells something: not for an empty default (None, "", [], False), and not where
    the help text already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default in ("", [])  # 0 is a default
        if empty or "default" in text.lower():
            return text
        return super()._get_help_string(action)
