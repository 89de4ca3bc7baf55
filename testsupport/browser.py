"""Headless Chromium for the dashboard's browser test and its README screenshot: Debian's /usr/bin/chromium driven
by Playwright for Python (never `playwright install`: the browser comes from the system's packages, `make` set-up
installs it with apt where it can)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    """FINOPS_CHROMIUM, else /usr/bin/chromium, else a chromium on PATH."""
    for candidate in (os.environ.get("FINOPS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@contextmanager
def browser():
    """A Playwright Browser on the system's Chromium (RuntimeError, with the fix, when there is none)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("No Chromium found (/usr/bin/chromium): install it with `apt-get install -y chromium` "
                           "(`make test` does on Debian) or set FINOPS_CHROMIUM to its path.")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=ARGS)
        try:
            yield b
        finally:
            b.close()
