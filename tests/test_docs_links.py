"""Every relative link of the README and of the documentation pages points at a file that exists, and every
#anchor at a heading of the page it names (GitHub's and MyST's heading slugs, which `make docs` uses too).

The tutorial pages of the site (docs/gallery/NAME.rst) are generated at build time from docs/tutorials/NAME.py
(and the gallery's index from docs/tutorials/README.txt), so a link to one is checked against its source.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if not {"_build", "gallery"} & set(
    p.relative_to(DOCS).parts))]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "").strip()
    return re.sub(r"[^\w\- ]", "", text.lower().replace(" ", "-"))


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.sub(r"^(```|~~~).*?^\1", "", page.read_text(),
                                                              flags=re.S | re.M), flags=re.M)
    return {_slug(h) for h in headings}


def _target(page: Path, link: str) -> tuple[Path, str]:
    path, _, anchor = link.partition("#")
    target = (page.parent / path).resolve() if path else page
    if target.parent == (DOCS / "gallery").resolve() and target.suffix == ".rst":
        target = DOCS / "tutorials" / ("README.txt" if target.stem == "index" else target.stem + ".py")
    return target, anchor


def _links(page: Path) -> list[str]:
    return [m for m in LINK.findall(_prose(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", m)]


CASES = [(page, link) for page in PAGES for link in _links(page)]


def test_the_pages_have_relative_links():
    assert len(CASES) > 30 and {p.name for p, _ in CASES} >= {"README.md", "index.md", "benchmarks.md"}


@pytest.mark.parametrize(("page", "link"), CASES, ids=[f"{p.relative_to(ROOT)}:{link}" for p, link in CASES])
def test_relative_link_resolves(page, link):
    target, anchor = _target(page, link)
    assert target.exists(), f"{page.relative_to(ROOT)}: {link} -> {target} does not exist"
    if anchor:
        assert target.suffix == ".md", f"{page.relative_to(ROOT)}: an anchor into a non-Markdown file: {link}"
        assert anchor in _anchors(target), (
            f"{page.relative_to(ROOT)}: {link}: no heading of {target.name} has the anchor #{anchor}; "
            f"its anchors: {sorted(_anchors(target))}")


def test_the_link_checker_sees_broken_links(tmp_path):
    """The checker itself: a missing file and a missing anchor are caught, a good link passes."""
    (tmp_path / "a.md").write_text("# Title\n\n## A section: `code` & more\n\n```\n[no](link.md)\n```\n"
                                   "[ok](#a-section-code--more) [missing](b.md) [bad](#nowhere) [web](https://x.org)\n")
    page = tmp_path / "a.md"
    assert _links(page) == ["#a-section-code--more", "b.md", "#nowhere"]
    assert "a-section-code--more" in _anchors(page) and "nowhere" not in _anchors(page)
    assert not _target(page, "b.md")[0].exists()
