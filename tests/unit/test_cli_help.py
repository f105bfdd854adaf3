"""Every CLI group, command and option says what it is (``--help`` is the CLI's documentation)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import winnow
from winnow.cli import GROUPS, build_parser

SRC = Path(winnow.__file__).resolve().parents[1]


def _subcommands(parser: argparse.ArgumentParser):
    """(name, subparser, its help) of each subcommand of ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name)


def _options(parser: argparse.ArgumentParser):
    """Every argument of ``parser`` but -h and the subcommand slot."""
    for action in parser._actions:
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            yield action


def _squeeze(text: str) -> str:
    """``text`` as --help shows it, without whitespace (argparse wraps lines, also after a hyphen)."""
    return "".join(text.replace("%%", "%").split())


def _tree():
    """("group", "group command" or "" for the top level, parser, help) of every node of the tree."""
    root = build_parser()
    yield "", root, root.description
    for group, gparser, ghelp in _subcommands(root):
        yield group, gparser, ghelp
        for command, cparser, chelp in _subcommands(gparser):
            yield f"{group} {command}", cparser, chelp


def test_tree_has_every_group_and_commands():
    groups = [name for name, *_ in _subcommands(build_parser())]
    assert groups == list(GROUPS)
    commands = [name for name, *_ in _tree() if " " in name]
    assert len(commands) > len(GROUPS)


def test_every_help_page_renders():
    """argparse %-formats help strings: a bare % breaks --help (as `eval --help` once did)."""
    for _, parser, _ in _tree():
        assert parser.format_help()


def test_every_group_and_command_has_help():
    missing = [name for name, _, text in _tree() if name and not (text or "").strip()]
    assert not missing, f"groups/commands without help: {missing}"


def test_every_option_has_help():
    missing = [
        f"{name or 'winnow'} {action.option_strings or action.dest}"
        for name, parser, _ in _tree()
        for action in _options(parser)
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS
    ]
    assert not missing, f"{len(missing)} options without help: {missing}"


def test_json_options_name_their_config_block():
    """A JSON option (type json_arg) says what it holds: a config block, or its JSON keys."""
    from winnow.cli._common import json_arg

    vague = [
        f"{name} {action.option_strings}"
        for name, parser, _ in _tree()
        for action in _options(parser)
        if action.type is json_arg and "JSON" not in action.help
    ]
    assert not vague, vague


def test_top_level_help_lists_each_group_with_its_help():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-m", "winnow", "--help"], capture_output=True, text=True, env=env, check=True
    ).stdout
    flat = _squeeze(out)
    for group, text in GROUPS.items():
        assert text.strip(), group
        assert _squeeze(f"{group} {text}") in flat, f"`winnow --help` lacks {group}: {text}"


@pytest.mark.parametrize("group", list(GROUPS))
def test_group_help_lists_each_command_with_its_help(group, capsys):
    root = build_parser()
    gparser = next(sub for name, sub, _ in _subcommands(root) if name == group)
    with pytest.raises(SystemExit) as exc:
        root.parse_args([group, "--help"])
    assert exc.value.code == 0
    flat = _squeeze(capsys.readouterr().out)
    for command, _, text in _subcommands(gparser):
        assert _squeeze(f"{command} {text}") in flat, f"`winnow {group} --help` lacks {command}: {text}"
