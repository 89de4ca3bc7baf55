"""User-facing errors: one clear sentence (what, where, what to do), shown without a traceback."""


class FinopsError(Exception):
    """An error caused by the user's input or configuration, reported as one sentence and a non-zero exit code."""
