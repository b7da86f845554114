"""docs/cli.md documents every `modeldrop` command and option (walking the click group)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from registry.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, path + (name,))
        else:
            yield " ".join(path + (name,)), command


def _options(command: click.Command) -> list[str]:
    return [opt for p in command.params if isinstance(p, click.Option) for opt in p.opts
            if opt.startswith("--") and opt != "--help"]


def _mentions(text: str, option: str) -> bool:
    return re.search(re.escape(option) + r"(?![\w-])", text) is not None


def test_every_command_and_option_is_in_docs_cli_md():
    doc = DOC.read_text()
    # A command's text: the bullets that name it ("modeldrop job ..." or `job`, as the
    # shared targeting bullet does for `promote` and `experiment create`).
    bullets = re.split(r"\n(?=- )", doc)
    missing = []
    for option in _options(main):
        if not _mentions(doc, option):
            missing.append(f"modeldrop {option}")
    for path, command in _commands(main):
        text = "\n".join(b for b in bullets if f"modeldrop {path}" in b or f"`{path}`" in b)
        if not text:
            missing.append(f"modeldrop {path}")
            continue
        missing += [f"modeldrop {path} {opt}" for opt in _options(command)
                    if not _mentions(text, opt)]
    assert not missing, "not documented in docs/cli.md: " + ", ".join(missing)
