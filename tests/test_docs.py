"""The documentation: the CLI reference is current, every link resolves, no internal issue
numbers, and the site builds.

* docs/cli.md is regenerated in memory by ``scripts/gen_cli_docs.py`` and compared with the
  file; each of its blocks is also compared with what the console script prints for
  ``waveglow CMD --help``, so the reference is the real help, not an imitation.
* Every relative link in README.md and docs/*.md names a file in the repository, and every
  ``#anchor`` a heading of that file, as both GitHub and MkDocs name headings.
* No internal issue numbers ("issue 16", "(issue 7)") in src/, scripts/, benchmarks/,
  README.md, docs/ or CHANGELOG.md: the product says what it refers to.
* ``mkdocs build --strict`` of mkdocs.yml (when mkdocs is installed: the test extra pins it),
  offline, into tmp_path.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "python scripts/gen_cli_docs.py"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
PATHS = GEN.commands()


# ---------------------------------------------------------------------------------------------
# The CLI reference


def test_the_cli_reference_is_current():
    current = (ROOT / "docs" / "cli.md").read_text() if (ROOT / "docs" / "cli.md").exists() else ""
    fresh = GEN.render()
    if current != fresh:
        diff = "".join(list(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True),
                                                 "docs/cli.md", "generated"))[:60])
        pytest.fail(f"docs/cli.md is stale: run {REGENERATE}\n{diff}")


def test_the_cli_reference_has_every_command():
    names = {path[0] for path in PATHS if path}
    assert {"synth", "mel", "info", "convert", "fetch", "list", "rm", "score", "plot", "train",
            "bench", "serve", "compare", "export"} <= names
    text = (ROOT / "docs" / "cli.md").read_text()
    for path in PATHS:
        assert f"\n## `{GEN.title(path)}`\n" in text, f"{GEN.title(path)} is not in docs/cli.md"


def _block(path: tuple[str, ...]) -> str:
    """The help text docs/cli.md holds for ``path`` (with its final newline)."""
    text = (ROOT / "docs" / "cli.md").read_text()
    heading = f"\n## `{GEN.title(path)}`\n\n```text\n"
    assert heading in text, f"docs/cli.md is stale: run {REGENERATE}"
    return text.split(heading, 1)[1].split("\n```\n", 1)[0] + "\n"


@pytest.fixture(scope="module")
def console_script(tmp_path_factory) -> Path:
    """A ``waveglow`` script running the console entry point (``waveglow_cli.cli:main``), so
    the usage line names ``waveglow`` as the installed command does."""
    script = tmp_path_factory.mktemp("bin") / "waveglow"
    script.write_text("from waveglow_cli.cli import main\nmain()\n")
    return script


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "waveglow" for p in PATHS])
def test_each_block_is_what_the_command_prints(path, console_script, tmp_path):
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("WAVEGLOW_") and name != "COLUMNS"}
    env.update({"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb",
                "WAVEGLOW_HOME": str(tmp_path / "home"), "WAVEGLOW_OFFLINE": "1"})
    result = subprocess.run([sys.executable, str(console_script), *path, "--help"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _block(path) == result.stdout, f"docs/cli.md is stale: run {REGENERATE}"


def test_the_generator_checks_and_writes(tmp_path, monkeypatch, capsys):
    target = tmp_path / "cli.md"
    monkeypatch.setattr(GEN, "OUTPUT", target)
    monkeypatch.setattr(GEN, "ROOT", tmp_path)
    assert GEN.main(["--check"]) == 1
    assert f"cli.md is stale: run {REGENERATE}" in capsys.readouterr().err
    assert GEN.main([]) == 0 and target.read_text() == GEN.render()
    assert GEN.main(["--check"]) == 0


# ---------------------------------------------------------------------------------------------
# Links


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a fence's lines blanked, so lines still count)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")


def _links(page: Path) -> list[str]:
    prose = re.sub(r"`[^`]*`", "", _prose(page.read_text()))  # inline code is not a link
    return [target for _, target in LINK.findall(prose)]


def _heading_texts(page: Path) -> list[str]:
    texts = []
    for line in _prose(page.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link: its text
            texts.append(text.replace("`", "").replace("*", ""))
    return texts


def _github_anchor(text: str) -> str:
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _mkdocs_anchor(text: str) -> str:
    """Python-Markdown's toc slugify (what MkDocs uses)."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """The anchors both GitHub and MkDocs give the headings of ``page`` (a link to one that
    only one of them makes would break on the other)."""
    github, mkdocs = set(), set()
    for text in _heading_texts(page):
        github.add(_github_anchor(text))
        mkdocs.add(_mkdocs_anchor(text))
    return github & mkdocs


def test_the_anchor_rules():
    assert _github_anchor("Checkpoints: fetch, list, info, rm") == "checkpoints-fetch-list-info-rm"
    assert _mkdocs_anchor("Checkpoints: fetch, list, info, rm") == "checkpoints-fetch-list-info-rm"
    assert _github_anchor("Streaming: -o -") != _mkdocs_anchor("Streaming: -o -")


def test_the_pages_are_there():
    names = {page.name for page in _pages()}
    assert {"README.md", "index.md", "synthesis.md", "serving.md", "checkpoints.md", "mels.md",
            "export.md", "training.md", "python-api.md", "security.md", "benchmarks.md",
            "architecture.md", "demo-model.md", "cli.md"} <= names


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    problems = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not in the repository
            continue
        file_part, _, anchor = target.partition("#")
        where = (page.parent / file_part).resolve() if file_part else page
        if file_part.startswith("/") or not where.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif not where.is_file():
            problems.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            problems.append(f"{target}: no heading #{anchor} in {where.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_readme_is_short_and_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = {target.partition("#")[0] for target in _links(ROOT / "README.md")}
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "index.md":
            assert f"docs/{page.name}" in linked, f"README.md does not link docs/{page.name}"


# ---------------------------------------------------------------------------------------------
# No internal issue numbers

ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\s*\d+|\(issue\b|\bissue\s*#", re.IGNORECASE)


def _product_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "mkdocs.yml",
             ROOT / "pyproject.toml"]
    for folder in ("src", "docs", "scripts", "benchmarks"):
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file()]
    return [p for p in files if p.exists() and "__pycache__" not in p.parts]


def test_the_issue_number_pattern():
    for text in ("issue 16", "(issue 7)", "Issues 3 and 4", "issue #12", "(issue 24, part 1)"):
        assert ISSUE_NUMBER.search(text), text
    for text in ("an issue", "tissue 3", "the hardening round"):
        assert not ISSUE_NUMBER.search(text), text


def test_no_internal_issue_numbers_in_the_product():
    found = []
    for path in _product_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # the demo weights
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if ISSUE_NUMBER.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "internal issue numbers (say what they refer to instead):\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------------
# The site


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                             "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "cli" / "index.html").is_file()
