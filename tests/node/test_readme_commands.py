"""README's and the docs pages' commands run as written from a fresh clone after
``bash deploy/install.sh``.

README is the front door; the reference it links lives in ``docs/*.md`` (issue 21, part 4), and
every page is checked alike. Every ``ct2mri-node`` command line in a page's shell blocks, and
every inline command written with ``.venv/bin/``, goes through the CLI's own argparse parser
in-process: the sub-command must exist and its flags must be accepted. Benchmark commands name
scripts that exist and flags those scripts define; compose commands name services and profiles
of ``deploy/compose.yaml``; every repository path a page names exists, and every relative link
(images included) resolves from the page's own folder. A failure names the page and its line
(issue 12, item 9).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ct2mri_node.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: README first, then every docs page (the reference README links).
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: The pages the reference moved to, which README must link and which must hold commands.
REFERENCE_PAGES = ("configuration", "routing", "model", "scale-out", "operations", "benchmarks", "reliability")
#: How README writes the two programs of the virtual environment that deploy/install.sh creates.
CLI, PYTHON = ".venv/bin/ct2mri-node", ".venv/bin/python"
#: A word in capitals stands for the reader's own value (FILE, CT_DIR, JOB).
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: Words that separate simple commands on one shell line.
SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class Command:
    """One simple command of a page: where it is, how it was written, and its words."""

    page: str
    line: int
    text: str
    argv: tuple[str, ...]
    inline: bool

    def where(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def _words(line: str) -> list[str]:
    """Shell words of one line, comments dropped; ``&&``, ``;``, ``|`` as words of their own."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def _simple_commands(page: str, line: str, number: int, inline: bool) -> list[Command]:
    """The simple commands of a shell line, leading ``NAME=value`` assignments left out."""
    out: list[Command] = []
    current: list[str] = []
    for word in [*_words(line), ";"]:
        if word not in SEPARATORS:
            current.append(word)
            continue
        while current and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", current[0]):
            current.pop(0)
        if current:
            out.append(Command(page, number, line.strip(), tuple(current), inline))
        current = []
    return out


def _logical_lines(body: str, first: int) -> list[tuple[int, str]]:
    """(page line, text) per logical line of a shell block: continuations joined, and the
    body of a ``for VAR in A B; do ... done`` loop repeated once per value with ``$VAR`` set."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(body.splitlines()):
        start, text = pending if pending else (first + offset, "")
        text += raw.strip()
        if text.endswith("\\"):
            pending = (start, text[:-1] + " ")
            continue
        pending = None
        if text:
            joined.append((start, text))
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(joined):
        number, text = joined[i]
        loop = re.fullmatch(r"for (\w+) in ([^;]+); do", text)
        if not loop:
            out.append((number, text))
            i += 1
            continue
        end = next(j for j in range(i + 1, len(joined)) if joined[j][1] == "done")
        for value in loop.group(2).split():
            for inner_number, inner in joined[i + 1:end]:
                out.append((inner_number, re.sub(rf"\$\{{?{loop.group(1)}\}}?", value, inner)))
        i = end + 1
    return out


def _fences(text: str) -> list[tuple[str, int, str]]:
    """(language, page line of the first body line, body) of every fenced block."""
    out = []
    for match in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.MULTILINE | re.DOTALL):
        indent = len(match.group(1))
        body = "\n".join(line[indent:] for line in match.group(3).splitlines())
        out.append((match.group(2), text.count("\n", 0, match.start(3)) + 1, body))
    return out


def page_commands(path: Path) -> list[Command]:
    """Every simple command of a page's shell blocks and its inline ``.venv/bin/`` commands."""
    text = path.read_text(encoding="utf-8")
    page = str(path.relative_to(ROOT))
    commands: list[Command] = []
    for language, first, body in _fences(text):
        if language in ("sh", "bash", "shell"):
            for number, line in _logical_lines(body, first):
                commands += _simple_commands(page, line, number, inline=False)
    # inline code spans, paired left to right outside the fenced blocks (blanked, lines kept)
    prose = re.sub(r"^( *)```.*?^\1```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.MULTILINE | re.DOTALL)
    for match in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(match.group(1).split())
        if re.match(r"(\.venv/bin/\S+|docker compose) ", span):
            commands += _simple_commands(page, span, prose.count("\n", 0, match.start()) + 1, inline=True)
    return commands


COMMAND_LIST = [c for path in PAGES for c in page_commands(path)]
CT2MRI = [c for c in COMMAND_LIST if Path(c.argv[0]).name == "ct2mri-node"]
BENCHMARKS = [c for c in COMMAND_LIST if c.argv[0] == PYTHON and len(c.argv) > 1 and c.argv[1].startswith("benchmarks/")]
COMPOSE = [c for c in COMMAND_LIST if c.argv[:2] == ("docker", "compose")]


def test_extraction_finds_the_commands_the_pages_are_made_of() -> None:
    """The parser below is not vacuous: the main commands of README and of the docs pages it
    links are among those found, and each reference page contributes its own."""
    used = {c.argv[1] for c in CT2MRI if len(c.argv) > 1}
    assert {"serve", "worker", "phantoms", "translate", "train", "evaluate", "check-config", "explain",
            "status", "retry", "purge"} <= used, sorted(used)
    assert len(CT2MRI) >= 25 and len(BENCHMARKS) >= 10 and COMPOSE
    assert {c.argv[1] for c in CT2MRI if c.argv[1:2] == ("worker",) or c.argv[1:2] == ("serve",)}
    # the evidence section's loop is expanded: one train command per architecture
    archs = {c.argv[c.argv.index("--arch") + 1] for c in CT2MRI if "--arch" in c.argv}
    assert {"enhanced", "ddpm", "unet"} <= archs
    by_page = {page: {c.argv[1] for c in CT2MRI if c.page == page and len(c.argv) > 1}
               for page in {c.page for c in COMMAND_LIST}}
    # README keeps the two set-up commands and the quick start
    assert {"serve", "phantoms", "translate", "status"} <= by_page["README.md"], by_page["README.md"]
    for name in REFERENCE_PAGES:
        assert any(c.page == f"docs/{name}.md" for c in COMMAND_LIST), f"docs/{name}.md: no command found"
    assert {"train", "evaluate", "prepare"} <= by_page["docs/model.md"]
    assert "worker" in by_page["docs/scale-out.md"] and "explain" in by_page["docs/routing.md"]
    assert {c.page for c in BENCHMARKS} >= {"docs/benchmarks.md", "docs/model.md"}


def test_shell_blocks_use_the_programs_install_sh_creates() -> None:
    """A bare ``ct2mri-node`` or ``python`` does not run from a fresh clone (nothing is activated)."""
    bare = [c.where() for c in COMMAND_LIST if not c.inline and c.argv[0] in ("ct2mri-node", "python", "python3")]
    assert not bare, "use .venv/bin/ct2mri-node and .venv/bin/python:\n" + "\n".join(bare)


@pytest.mark.parametrize("command", CT2MRI, ids=lambda c: f"{Path(c.page).stem}-line{c.line}-{'-'.join(c.argv[1:3])}")
def test_ct2mri_node_command_is_accepted_by_the_cli_parser(command: Command) -> None:
    assert command.argv[0] == CLI, f"{command.where()}: write it as {CLI}"
    argv = ["1" if PLACEHOLDER.match(word) else word for word in command.argv[1:]]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0 and "--help" in argv:
            return   # argparse printed the help of a command that exists
        pytest.fail(f"{command.where()}\n  ct2mri-node refuses it (exit {exc.code}): {stderr.getvalue().strip()}")
    assert getattr(args, "func", None) is not None, f"{command.where()}: no sub-command"
    assert args.command.replace("-", "_") in COMMANDS


def test_readme_lists_every_command_of_the_cli() -> None:
    text = README.read_text(encoding="utf-8")
    listing = text[text.index("\nCommands ("):]
    listing = listing[:listing.index("\n\n")]
    missing = [name.replace("_", "-") for name in COMMANDS if f"`{name.replace('_', '-')}" not in listing]
    assert not missing, f"README's list of commands leaves out {missing}"


@pytest.mark.parametrize("command", BENCHMARKS, ids=lambda c: f"{Path(c.page).stem}-line{c.line}-{Path(c.argv[1]).stem}")
def test_benchmark_command_names_a_script_and_flags_that_exist(command: Command) -> None:
    script = ROOT / command.argv[1]
    assert script.is_file(), f"{command.where()}: no {command.argv[1]}"
    source = script.read_text(encoding="utf-8")
    assert "argparse" in source and "__main__" in source, f"{command.where()}: not a runnable script"
    for word in command.argv[2:]:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            assert f'"{flag}"' in source, f"{command.where()}: {command.argv[1]} defines no {flag}"


def _repository_paths(path: Path) -> set[str]:
    """The repository paths a page names (written from the repository root, as in README)."""
    text = path.read_text(encoding="utf-8")
    return set(re.findall(r"(?<![\w./-])((?:benchmarks|deploy|docs|config|tests|ct2mri_node|\.ci)/[\w./@-]*\w/?)", text))


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_a_page_names_exists(path: Path) -> None:
    missing = sorted(p for p in _repository_paths(path) if not (ROOT / p).exists())
    assert not missing, f"{path.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_pages_name_the_repository_paths_they_are_about() -> None:
    paths = set().union(*(_repository_paths(p) for p in PAGES))
    assert len(paths) > 20 and len(_repository_paths(README)) > 10
    named = {p for p in paths if p.startswith("benchmarks/")}
    assert named >= {f"benchmarks/{c.argv[1].split('/', 1)[1]}" for c in BENCHMARKS}


#: A markdown link or image: ``[text](target)`` / ``![alt](target)``; the target up to a space or ``)``.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_a_page_resolves_from_its_folder(path: Path) -> None:
    """Links and images as a markdown viewer follows them: relative to the page (docs pages
    link ``images/...`` and ``../config/...``, README ``docs/...``)."""
    text = path.read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if not re.match(r"^(https?:|mailto:|#)", t)]
    broken = sorted(t for t in targets if not (path.parent / t.split("#", 1)[0]).exists())
    assert not broken, f"{path.relative_to(ROOT)}: links that do not resolve from {path.parent.relative_to(ROOT) or '.'}/: {broken}"


def test_readme_is_the_front_door_and_links_every_docs_page() -> None:
    """README keeps what a newcomer needs first and links the reference instead of holding it."""
    text = README.read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]*)?\)", text))
    pages = {str(p.relative_to(ROOT)) for p in PAGES[1:]}
    assert {f"docs/{name}.md" for name in (*REFERENCE_PAGES, "training")} <= pages
    assert pages <= linked, f"README does not link {sorted(pages - linked)}"
    for heading in ("## Set-up on a fresh machine", "## Quick start", "## Configuration", "## Evidence",
                    "## Documentation"):
        assert f"\n{heading}" in text, f"README lost its section {heading!r}"
    # the two set-up commands, and CI runs the test command README gives
    blocks = [body for language, _, body in _fences(text) if language == "sh"]
    serve = "bash deploy/install.sh && .venv/bin/ct2mri-node serve --config config/ct2mri-node.yaml"
    tests = "bash deploy/install.sh && .venv/bin/python -m pytest -q"
    assert serve in blocks and tests in blocks, blocks[:2]
    assert ".venv/bin/python -m pytest -q" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # reference belongs in docs/: the front door stays short enough to read at once
    assert text.count("\n") < 300, f"README has {text.count(chr(10))} lines: move reference material to docs/"


@pytest.mark.parametrize("command", COMPOSE, ids=lambda c: f"{Path(c.page).stem}-line{c.line}")
def test_compose_command_names_services_and_profiles_of_the_compose_file(command: Command) -> None:
    argv = list(command.argv[2:])
    assert argv[:2] == ["-f", "deploy/compose.yaml"], command.where()
    compose = yaml.safe_load((ROOT / argv[1]).read_text(encoding="utf-8"))
    services = compose["services"]
    profiles = {p for svc in services.values() for p in svc.get("profiles", [])}
    rest = argv[2:]
    named: list[str] = []
    while rest:
        word = rest.pop(0)
        if word == "--profile":
            profile = rest.pop(0)
            assert profile in profiles, f"{command.where()}: no service has profile {profile}"
        elif word == "--scale":
            service = rest.pop(0).split("=", 1)[0]
            assert service in services, f"{command.where()}: no service {service}"
        elif not word.startswith("-") and word != "up":
            named.append(word)
    assert "up" in argv, command.where()
    unknown = [name for name in named if name not in services]
    assert not unknown, f"{command.where()}: no such service(s) {unknown} in deploy/compose.yaml"
