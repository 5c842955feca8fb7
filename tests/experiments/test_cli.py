"""The `ablate` command as documented: --version, help text and README entry for every option, read-only commands."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from experiments import cli

ROOT = Path(__file__).resolve().parents[2]


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its command line: ``launch``, ``data sample``."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[f"{prefix}{name}"] = sub
                out.update(_subparsers(sub, f"{prefix}{name} "))
    return out


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert re.fullmatch(r"ablate \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_every_option_has_help_text() -> None:
    parser = cli.get_args_parser()
    missing = [f"ablate {cmd} {opt.option_strings[0]}" for cmd, sub in _subparsers(parser).items()
               for opt in _options(sub) if not (opt.help or "").strip()]
    missing += [a.option_strings[0] for a in _options(parser) if not (a.help or "").strip()]
    assert not missing, missing


def test_every_option_is_in_the_readme_command_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Commands"):]
    table = table[:table.index("\n\n", table.index("| command |"))]
    rows = {}
    for line in table.splitlines():
        first_cell = line.split(" | ")[0]  # the command column: `ablate register STUDY` / `ablate models`
        for name in re.findall(r"`ablate ([a-z]+(?: sample)?)", first_cell):
            rows[name] = rows.get(name, "") + first_cell
    parser = cli.get_args_parser()
    missing = []
    for cmd, sub in _subparsers(parser).items():
        if cmd == "data":
            continue  # a group: `data sample` is the command
        row = rows.get(cmd, "")
        if not row:
            missing.append(f"ablate {cmd}")
        missing += [f"ablate {cmd} {opt.option_strings[-1]}" for opt in _options(sub)
                    if opt.help != argparse.SUPPRESS and not any(o in row for o in opt.option_strings)]
    assert "ablate --version" in readme
    assert not missing, f"not in README.md's command table: {missing}"


@pytest.mark.parametrize("argv", [["report", "smoke"], ["models"], ["gc", "smoke", "--dry-run"], ["ui", "--port", "0"],
                                  ["pull", "smoke-detector@champion", "--dest", "out"]])
def test_read_only_commands_leave_no_store_behind(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(cli, "quiet_libraries", lambda verbose=False: None)  # it sets process-wide variables
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code != 0 and "mlruns" in err and "ablate launch" in err, err
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "out").exists()
