"""Regenerate docs/img/dashboard.png, the README's picture of the dashboard, in headless Chromium.

    .venv/bin/python docs/screenshot.py [OUT/report.html] [docs/img/dashboard.png]

Run `make run` first (it writes out/report.html). The page is opened from the file, offline.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testsupport.browser import browser  # noqa: E402


def main(report: str = "out/report.html", png: str = "docs/img/dashboard.png") -> None:
    report_path = Path(report).resolve()
    if not report_path.exists():
        sys.exit(f"{report_path} does not exist; run `make run` first (or pass a report.html).")
    with browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 1700}, device_scale_factor=1)
        page.goto(report_path.as_uri())
        page.wait_for_selector("#plot-forecast .main-svg")
        page.screenshot(path=png, full_page=False)
    print(f"wrote {png}")


if __name__ == "__main__":
    main(*sys.argv[1:])
