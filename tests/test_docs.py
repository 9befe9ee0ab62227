"""The README and docs/ as GitHub renders them: every relative link and #anchor resolves, the README stays a
five-minute read in the order a newcomer needs, and every command is in the command reference. (The site build,
``mkdocs build --strict``, checks the docs' links again with MkDocs' own rules: ``make docs``, run by CI.)"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from .conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text without code: links and headings inside code blocks and spans are not links or headings."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")  # a link's or code's text only
    text = text.lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = github_slug(heading)
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)  # a repeated heading gets -1, -2 ...
        seen[slug] = seen.get(slug, 0) + 1
    return out


def links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text(encoding="utf-8"))) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor in {resolved.relative_to(ROOT)}")
        elif not resolved.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
    assert broken == []


def test_the_slugs_are_githubs():
    assert github_slug("Cold-start staged searches (fitted space, no hand preset)") == (
        "cold-start-staged-searches-fitted-space-no-hand-preset"
    )
    assert github_slug('What "not tracked" covers') == "what-not-tracked-covers"
    assert github_slug("One command per budget: screen, promote, confirm") == (
        "one-command-per-budget-screen-promote-confirm"
    )
    assert github_slug("The `--budget` flag") == "the---budget-flag"  # GitHub keeps every hyphen


def test_every_docs_page_is_in_the_site_and_the_readme():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in (ROOT / "docs").glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
        assert page.name == "index.md" or f"(docs/{page.name})" in readme, f"the README does not link {page.name}"


def test_the_readme_is_short_and_in_a_newcomers_order():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    sections = re.findall(r"^## (.+)$", FENCE.sub("", text), re.M)
    expected = ["Results", "Install", "Check my model", "Check my notebook, or grade a folder of them", "Search"]
    assert sections[: len(expected)] == expected
    assert {"How it works", "Documentation", "License"} <= set(sections)
    assert "make search" in text and "make test" in text  # the two set-up commands stay


def test_every_command_is_in_the_command_reference():
    from mnist_challenge.cli.main import build_parser
    from search.commands.main import COMMANDS

    reference = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    sub = next(a for a in build_parser()._actions if a.choices and "inspect" in a.choices)
    missing = [f"mnist-challenge {name}" for name in sub.choices if f"`mnist-challenge {name}`" not in reference]
    missing += [f"mnist-search {name}" for name in COMMANDS if f"`mnist-search {name}`" not in reference]
    assert missing == []
