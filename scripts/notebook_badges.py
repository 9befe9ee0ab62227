"""The "Open in Colab" badges of the committed notebooks and the README, generated from the one repository address
the project declares (``[project.urls] Repository`` in ``pyproject.toml``).

    python scripts/notebook_badges.py [--check]

puts a badge cell first in every ``notebooks/*.ipynb`` (replacing an older one), and rewrites the Colab links and
install lines of the README, ``docs/*.md`` and the quickstart to match; ``--check`` changes nothing and exits 1
when anything is out of date (the test suite runs it). A fork changes the address in ``pyproject.toml`` and runs
this once.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_MARK = "<!-- colab-badge -->"  # the badge cell's first line: how an older badge cell is recognised
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/main/([\w./-]+\.ipynb)")
INSTALL_LINE = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+")


def repository(root: Path = ROOT) -> str:
    """``owner/name`` from ``pyproject.toml``'s ``[project.urls] Repository``."""
    url = tomllib.loads((root / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)/?", url)
    if match is None:
        raise ValueError(f"[project.urls] Repository must be https://github.com/OWNER/NAME, not {url!r}")
    return match[1]


def colab_link(path: str, repo: str) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/main/{path}"


def badge(path: str, repo: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_link(path, repo)})"


def _badged_notebook(text: str, path: str, repo: str) -> str:
    nb = json.loads(text)
    source = [f"{BADGE_MARK}\n", badge(path, repo)]
    cell = {"cell_type": "markdown", "id": "colab-badge", "metadata": {}, "source": source}
    cells = nb["cells"]
    first = cells[0] if cells else None
    if first and first["cell_type"] == "markdown" and "".join(first["source"]).startswith(BADGE_MARK):
        cells[0] = cell
    else:
        cells.insert(0, cell)
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"  # as nbformat writes it


def _relinked(text: str, repo: str) -> str:
    text = COLAB_LINK.sub(lambda m: colab_link(m[1], repo), text)
    return INSTALL_LINE.sub(f"git+https://github.com/{repo}", text)


def updated_files(root: Path = ROOT) -> dict[Path, str]:
    """Each file whose badges or links are out of date, with its new text."""
    repo = repository(root)
    changed = {}
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        text = path.read_text(encoding="utf-8")
        new = _relinked(_badged_notebook(text, path.relative_to(root).as_posix(), repo), repo)
        if new != text:
            changed[path] = new
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        if (new := _relinked(text, repo)) != text:
            changed[page] = new
    return changed


def main(argv: list[str]) -> int:
    changed = updated_files()
    if "--check" in argv:
        for path in changed:
            print(f"out of date: {path.relative_to(ROOT)} (run python scripts/notebook_badges.py)")
        return 1 if changed else 0
    for path, text in changed.items():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
