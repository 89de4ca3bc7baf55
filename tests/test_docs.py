"""The README and docs/ stand on their own: every relative link resolves, nothing points outside the clone, and the
README stays a five-minute read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves_inside_the_clone(page):
    text = page.read_text()
    assert "../shared" not in text, f"{page.name} points outside the repository"
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.exists(), f"{page.name} links {target}, which does not exist"
        assert ROOT in resolved.parents or resolved == ROOT, f"{page.name} links {target} outside the repository"


def test_the_readme_is_short_and_links_every_topic():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 220
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in text, f"README does not link docs/{page.name}"
    assert "make run" in text and "make test" in text
