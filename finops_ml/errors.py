"""User-facing errors: one clear sentence (what, where, what to do), shown without a traceback."""


class FinopsError(Exception):
    """An error caused by the user's input or configuration, reported as one sentence and a non-zero exit code."""


class InsufficientData(FinopsError):
    """The data cannot train one model (too little history, no labelled resource...): the message says in one
    sentence what is missing and how much is needed. The pipeline records it for that model and trains the others."""
