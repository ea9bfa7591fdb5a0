"""docs/cli.md against ``node-init --help``: every subcommand, flag and default."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from importlib.metadata import entry_points

import pytest

from ._markdown import DOCS, code_spans, section, table_rows

PAGE = DOCS / "cli.md"


def _main(argv: list[str]) -> object:
    """The installed ``node-init`` command's entry point, called with ``argv``."""
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "node-init"]
    return script.load()(argv)


def _help(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        _main([*argv, "--help"])
    return out.getvalue()


def _subcommands() -> list[str]:
    match = re.search(r"\{([\w,-]+)\}", _help())
    assert match, "no subcommand list in node-init --help"
    return match.group(1).split(",")


def _section_of(sub: str) -> str:
    """The section whose heading names ``node-init SUB`` (several subcommands may share one)."""
    text = PAGE.read_text()
    for block in re.split(r"\n(?=## )", text):
        heading = block.splitlines()[0]
        if heading.startswith("## ") and (f"`node-init {sub}`" in heading or f"`{sub}`" in heading):
            return block
    return ""


def _options(sub: str) -> list[tuple[str, str | None]]:
    """(flag, default) of a subcommand, from its parser (defaults of ``store_true`` flags are ``off``)."""
    parser = argparse.ArgumentParser()
    captured: dict[str, argparse.ArgumentParser] = {}
    real = argparse.ArgumentParser.parse_args

    def grab(self: argparse.ArgumentParser, *a: object, **k: object) -> argparse.Namespace:
        captured["root"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = grab  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(SystemExit):
            _main([sub])
    finally:
        argparse.ArgumentParser.parse_args = real  # type: ignore[method-assign]
    parser = captured["root"]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = []
    for action in subparsers.choices[sub]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest.upper()
        default = "off" if isinstance(action, argparse._StoreTrueAction) else action.default
        found.append((name, None if default is None else str(default)))
    return found


def test_every_subcommand_has_a_section() -> None:
    missing = [s for s in _subcommands() if not _section_of(s)]
    assert not missing, f"cli.md has no section for: {missing}"


@pytest.mark.parametrize("sub", _subcommands())
def test_every_flag_and_its_default_is_documented(sub: str) -> None:
    text = _section_of(sub)
    rows = {code_spans(c[0])[0]: c for c in table_rows(text) if len(c) == 3 and code_spans(c[0])}
    for flag, default in _options(sub):
        assert flag in rows, f"cli.md's section for {sub} has no row for {flag}"
        cell = rows[flag][1]
        if default is None:
            assert cell in ("none", "required"), f"{sub} {flag}: no default in the code, the page says {cell!r}"
        elif default == "off":
            assert cell == "off", f"{sub} {flag}: a switch, the page says {cell!r}"
        else:
            assert default in code_spans(cell), (
                f"{sub} {flag}: the code's default is {default!r}, the page says {cell!r}")
    documented = set(rows)
    known = {flag for flag, _ in _options(sub)}
    assert documented <= known, f"{sub}: cli.md documents {sorted(documented - known)}, which --help does not have"
    assert all(f in _help(sub) for f in known if f.startswith("--"))


def test_every_exit_code_the_help_lists_is_documented() -> None:
    text = _help()
    assert "exit codes:" in text, "node-init --help lists no exit codes"
    listed = set(re.findall(r"^\s+(\d+)\s+\S", text.split("exit codes:", 1)[1], re.M))
    table = section(PAGE.read_text(), "## Exit codes")
    documented = {c[0] for c in table_rows(table) if c[0].isdigit()}
    assert listed == documented, f"--help lists exit codes {sorted(listed)}, cli.md {sorted(documented)}"
