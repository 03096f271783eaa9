"""MkDocs hook: the site is the repository's own Markdown, laid out as in the repository.

README.md is the home page; docs/, experiments/, CHANGELOG.md, CONTRIBUTING.md and
tests/README.md keep their paths, so every relative link works on the site exactly as it
does in the repository, and ``mkdocs build --strict`` (scripts/test.sh) fails on a link or an
anchor that points nowhere. The API reference pages (docs/api/) are rendered by mkdocstrings
from the package's docstrings, so a reference to a module or name that no longer exists fails
the build too.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "CHANGELOG.md", "CONTRIBUTING.md", "tests/README.md")
FOLDERS = ("docs", "experiments")
KINDS = (".md", ".png", ".svg", ".jpg")


def _repository_files() -> list[Path]:
    found = [ROOT / p for p in PAGES]
    for folder in FOLDERS:
        found += sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in KINDS and p.is_file())
    return found


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    """Replace the docs_dir's pages by the repository's; keep the theme's own files."""
    docs_dir = Path(config.docs_dir).resolve()
    kept = [f for f in files if not Path(f.abs_src_path or "").resolve().is_relative_to(docs_dir)]
    pages = [File(str(p.relative_to(ROOT)), src_dir=str(ROOT), dest_dir=config.site_dir,
                  use_directory_urls=config.use_directory_urls) for p in _repository_files()]
    return Files(kept + pages)
