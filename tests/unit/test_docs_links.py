"""The README and docs/ pages: every relative link resolves (the file, and for `page.md#anchor` a heading
of that page under GitHub's slug rules), the README stays a newcomer's two screens, and its two commands
are real scripts (the test command being the one CI runs)."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: "Two screens": about 60 lines of a laptop's terminal or browser window each, and 6 KiB of text.
README_MAX_LINES = 120
README_MAX_BYTES = 6 * 1024

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str):
    """The lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text (code, links and emphasis reduced to their text),
    lower-cased, every character that is not a letter, digit, space, hyphen or underscore dropped,
    spaces turned into hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*+)(.+?)\1", r"\2", text)
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set:
    """Every anchor of a markdown page, with GitHub's -1, -2 ... suffixes for repeated headings."""
    seen: dict = {}
    found = set()
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path):
    """(line number, target) of every link outside code that is not a URL."""
    text = page.read_text(encoding="utf-8")
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1)
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
                continue  # http(s):, mailto: ...
            yield number, target


def test_the_slug_rules():
    assert github_slug("Packaged data (`llava_avc/eval/data/`)") == "packaged-data-llava_avcevaldata"
    assert github_slug("LLaVA's own scripts: `llava-avc run`") == "llavas-own-scripts-llava-avc-run"
    assert github_slug("Quantized models (one 8-12 GB GPU)") == "quantized-models-one-8-12-gb-gpu"
    assert github_slug("**Bold** and [a link](x.md)") == "bold-and-a-link"


def test_the_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](a.md) `[b](b.md)` [c](https://x.org) [d](#here)\n```\n[e](e.md)\n```\n# Here\n")
    assert [target for _, target in relative_links(page)] == ["a.md", "#here"]
    assert anchors(page) == {"here"}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    broken = []
    for number, target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / unquote(path)).resolve() if path else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and resolved.suffix == ".md" and unquote(anchor).lower() not in anchors(resolved):
            broken.append(f"{where} (no heading with that anchor in {resolved.relative_to(ROOT)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_fits_two_screens():
    data = (ROOT / "README.md").read_bytes()
    lines = data.decode("utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"
    assert len(data) <= README_MAX_BYTES, (
        f"README.md has {len(data)} bytes (at most {README_MAX_BYTES}): move detail to docs/")


def test_every_docs_page_is_reachable_from_the_readme():
    """The README links the docs pages (directly, or through a page it links): none is an orphan."""
    reached, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for _, target in relative_links(page):
            path = target.partition("#")[0]
            linked = (page.parent / unquote(path)).resolve() if path else page
            if linked.suffix == ".md" and linked.is_file() and linked.parent in (ROOT, ROOT / "docs"):
                todo.append(linked)
    orphans = [p.name for p in PAGES if p.resolve() not in reached]
    assert not orphans, f"docs pages no link from the README leads to: {orphans}"


def test_the_two_commands_are_scripts_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(bash scripts/\S+)", section, re.M)
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    for command in commands:
        assert (ROOT / command.split()[1]).is_file(), command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^bash scripts/test\.sh\s*$", ci, re.M), ".ci/run must run the README's test command"
