"""The documentation stays true: the generated configuration reference, the links, and the
README's runnable commands.

The runnable marker: a fenced block in README.md whose info string is `bash runnable`, that is,
a block opened with

    ```bash runnable

is run by test_readme_runnable_commands. Each line of it that starts with `nnlab ` (a trailing
`# comment` dropped, `\\` continuations joined) is invoked in-process with typer's CliRunner, in
order, in one fresh temporary working directory, so `nnlab eval latest` finds the run trained
above it. `nnlab train` and `nnlab sweep` lines get tiny budgets appended (BUDGET: one epoch of
two batches). Every command must exit 0. Mark only commands that work on a fresh checkout with
no data on disk; never `pip` or `pytest` lines. Blocks with any other info string (```bash,
plain ```) are shown to readers and never run.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKER = "bash runnable"
BUDGET = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
]
BUDGETED = ("train", "sweep")  # the commands that train


def _make_reference():
    spec = importlib.util.spec_from_file_location("make_reference", DOCS / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# --- fenced blocks and links -------------------------------------------------------------------

FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of every fenced code block."""
    blocks: list[tuple[str, list[str]]] = []
    opened: tuple[str, str] | None = None
    lines: list[str] = []
    for line in text.splitlines():
        match = FENCE.match(line.strip())
        if opened is None and match:
            opened, lines = (match[1], match[2].strip()), []
        elif opened is not None and match and match[1].startswith(opened[0]) and not match[2]:
            blocks.append((opened[1], lines))
            opened = None
        elif opened is not None:
            lines.append(line)
    assert opened is None, "a fenced block is never closed"
    return blocks


def runnable_commands(text: str) -> list[list[str]]:
    commands = []
    for info, lines in fenced_blocks(text):
        if info != MARKER:
            continue
        joined = "\n".join(lines).replace("\\\n", " ")
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "nnlab":
                commands.append(words[1:])
            elif words:
                raise AssertionError(f"a runnable block holds a line that is not nnlab: {line}")
    return commands


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code, where links are links."""
    kept, fenced = [], None
    for line in text.splitlines():
        match = FENCE.match(line.strip())
        if fenced is None and match:
            fenced = match[1]
        elif fenced is not None and match and match[1].startswith(fenced) and not match[2]:
            fenced = None
        elif fenced is None:
            kept.append(line)
    return re.sub(r"`[^`]*`", "", "\n".join(kept))


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slugs(text: str) -> set[str]:
    """GitHub's anchors for a page's headings."""
    found: set[str] = set()
    for line in prose(text).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match[1])  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def pages() -> list[Path]:
    return [README, ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


# --- the tests ---------------------------------------------------------------------------------


def test_configuration_reference_is_what_the_script_writes_now():
    make_reference = _make_reference()
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == make_reference.render(), (
        "docs/configuration.md is out of date with conf/ or nnlab/schemas.py: "
        "run python docs/make_reference.py"
    )
    assert make_reference.main(["--check"]) == 0


def test_every_relative_link_points_at_an_existing_file_and_heading():
    broken = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for target in LINK.findall(prose(text)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in slugs(file.read_text("utf-8")):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readmes_group_table_lists_every_choice_in_conf():
    rows = re.findall(r"^\| `(\w+)` \| (`.*`) \|$", README.read_text(encoding="utf-8"), re.M)
    listed = {group: set(re.findall(r"`(\w+)`", choices)) for group, choices in rows}
    assert listed, "README.md has no group table"
    for group, choices in listed.items():
        in_conf = {path.stem for path in (ROOT / "conf" / group).glob("*.yaml")}
        assert choices == in_conf, (
            f"README's {group} choices: {sorted(choices)}, conf/: {sorted(in_conf)}"
        )


def test_the_readme_marks_its_quick_tour_runnable():
    commands = runnable_commands(README.read_text(encoding="utf-8"))
    assert commands, f"README.md has no ```{MARKER} block"
    assert {words[0] for words in commands} >= {"train", "eval", "runs", "config", "sweep"}


def test_readme_runnable_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from nnlab.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for words in runnable_commands(README.read_text(encoding="utf-8")):
        arguments = [*words, *BUDGET] if words[0] in BUDGETED else words
        result = runner.invoke(app, arguments, catch_exceptions=False)
        assert result.exit_code == 0, f"nnlab {shlex.join(arguments)}\n{result.output}"
