"""--help of every training method and every script: each flag is listed with its help text and its default."""

import importlib
import os
import re

import pytest

from pagoda import methods, script_util
from tests.helpers.methods import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "scripts"))
                 if f.endswith(".py") and "\ndef main(" in open(os.path.join(REPO, "scripts", f)).read())
CLIS = ([f"method:{name}" for name in methods.METHODS] + [f"scripts.{name}" for name in SCRIPTS if name != "train"]
        + ["pagoda.domain"])


def _groups_and_main(cli):
    """(flag groups, main) of a command line: a method's through scripts/train.py, else the module's own."""
    if cli.startswith("method:"):
        name = cli.split(":", 1)[1]
        return methods.get(name).GROUPS, lambda argv: train.main(["--method", name, *argv])
    module = importlib.import_module(cli)
    return (module.flag_groups() if hasattr(module, "flag_groups") else module.GROUPS), module.main


def _entries(text):
    """{--option: its entry in argparse's --help output, without whitespace (lines wrap anywhere, hyphens too)}."""
    body = text.split("\noptions:\n", 1)[1]
    entries = {}
    for part in re.split(r"\n  (?=-)", "\n" + body):
        first, *rest = part.split("\n")
        text = "".join((first + "".join(line for line in rest if line.startswith(" "))).split())
        entries.update({option: text for option in re.findall(r"(?:^|, )(--?\w+)", first.split("  ")[0])})
    return entries


def test_every_script_with_a_command_line_is_covered():
    assert len(SCRIPTS) >= 12 and "train" in SCRIPTS and "compare_figure" not in SCRIPTS


@pytest.mark.parametrize("cli", CLIS)
def test_help_shows_every_flag_with_its_help_text(cli, capsys, monkeypatch):
    parsers = []
    create_parser = script_util.create_parser
    monkeypatch.setattr(script_util, "create_parser", lambda *a, **k: parsers.append(create_parser(*a, **k)) or
                        parsers[-1])
    groups, main = _groups_and_main(cli)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    entries = _entries(capsys.readouterr().out)
    flags = {key: flag for group in groups.values() for key, flag in group.items()}
    assert flags and all(isinstance(flag, script_util.Flag) for flag in flags.values())
    for key, flag in flags.items():
        assert len(flag.help.split()) >= 3, f"--{key}: help too short to say what it does"
        assert "".join(flag.help.split()) in entries[f"--{key}"], key
        assert entries[f"--{key}"].endswith("".join(f"(default: {flag.default})".split())), key
    # what the scripts add beside the groups (--preset, --dry_run, --method, --row) is explained too
    [parser] = parsers
    for action in parser._actions:
        assert action.help and all(option in entries for option in action.option_strings), action.option_strings
    assert set(entries) == {option for action in parser._actions for option in action.option_strings}
