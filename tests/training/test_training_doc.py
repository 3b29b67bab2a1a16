"""docs/training.md's commands run as written: ``ct2mri-node`` lines through the CLI's parser,
``torchrun`` lines through torchrun's own parser and then ours (the part after ``-m ct2mri_node``),
benchmark lines name scripts and flags that exist; the page keeps its sections."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

from ct2mri_node.cli import build_parser
from tests.node.test_readme_commands import Command, _fences, _logical_lines, _simple_commands

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "training.md"


def doc_commands() -> list[Command]:
    commands: list[Command] = []
    for language, first, body in _fences(DOC.read_text(encoding="utf-8")):
        if language == "sh":
            for number, line in _logical_lines(body, first):
                commands += _simple_commands("docs/training.md", line, number, inline=False)
    return commands


COMMANDS = doc_commands()


def _parse_ours(command: Command, argv: list[str]) -> None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"docs/training.md:{command.line}: ct2mri-node refuses it (exit {exc.code}): {stderr.getvalue()}")
    assert getattr(args, "func", None) is not None


def test_the_page_has_every_section_and_every_kind_of_command() -> None:
    text = DOC.read_text(encoding="utf-8")
    for heading in ("## The data: SynthRAD layout", "## One GPU", "## Several GPUs on one machine",
                    "## Several machines", "## Export and deployment as a MONAI bundle"):
        assert f"\n{heading}\n" in text, heading
    kinds = {Path(c.argv[0]).name for c in COMMANDS}
    assert {"ct2mri-node", "torchrun"} <= kinds
    assert any("--nnodes" in c.argv and "--rdzv-endpoint" in c.argv for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"line{c.line}-{Path(c.argv[0]).name}")
def test_command_is_accepted(command: Command) -> None:
    program = Path(command.argv[0]).name
    assert command.argv[0].startswith(".venv/bin/"), f"docs/training.md:{command.line}: write .venv/bin/{program}"
    if program == "ct2mri-node":
        _parse_ours(command, list(command.argv[1:]))
    elif program == "torchrun":
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                launch = get_args_parser().parse_args(list(command.argv[1:]))
        except SystemExit as exc:
            pytest.fail(f"docs/training.md:{command.line}: torchrun refuses it (exit {exc.code}): {stderr.getvalue()}")
        assert launch.module and launch.training_script == "ct2mri_node", command.where()
        _parse_ours(command, list(launch.training_script_args))
    elif program == "python":
        script = ROOT / command.argv[1]
        assert script.is_file(), command.where()
        flags = [w.split("=", 1)[0] for w in command.argv[2:] if w.startswith("--")]
        assert all(f'"{flag}"' in script.read_text(encoding="utf-8") for flag in flags), command.where()
    else:
        pytest.fail(f"docs/training.md:{command.line}: unexpected program {program}")


def test_inline_benchmark_and_commands_name_what_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    for path in set(re.findall(r"(?<![\w./-])((?:benchmarks|docs|ct2mri_node)/[\w./-]*\w)", text)):
        assert (ROOT / path).exists(), path
