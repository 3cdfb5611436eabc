"""The command line starts without torch: help, --version and config errors stay fast."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

import secfed
from secfed.cli import LAZY_COMMANDS, app, load_lazy_command

HEAVY = ("torch", "transformers", "peft", "datasets", "opacus", "tenseal", "phe", "flwr", "scipy")


def _in_subprocess(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_importing_the_cli_imports_no_heavy_package():
    out = _in_subprocess(f"""
        import sys
        import secfed.cli
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["run", "BAD"]])
def test_help_version_and_config_errors_import_no_heavy_package(tmp_path, argv):
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation]\nclients = 0\n")
    argv = [str(bad) if a == "BAD" else a for a in argv]
    out = _in_subprocess(f"""
        import sys
        from secfed.cli import main
        sys.argv = ["secfed", *{argv!r}]
        try:
            main()
        except SystemExit as exit:
            code = exit.code
        print("HEAVY", sorted(m for m in {HEAVY!r} if m in sys.modules), code)
    """)
    assert out.stdout.strip().splitlines()[-1].startswith("HEAVY [] ")
    if argv[0] == "run":
        assert out.stdout.strip().endswith(" 2")
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith("error: invalid experiment file")
        assert "federation.clients = 0" in lines[0]


def test_version_and_help_text():
    cli = CliRunner()
    assert cli.invoke(app, ["--version"]).output.strip() == f"secfed {secfed.__version__}"
    shown = cli.invoke(app, ["--help"]).output
    assert "``" not in shown and ":func:" not in shown
    for name in ("run", "keys", "privacy", *LAZY_COMMANDS):
        assert name in shown


@pytest.mark.parametrize("name", list(LAZY_COMMANDS))
def test_lazy_command_help_lines_match_the_commands(name):
    real = load_lazy_command(name)
    assert (real.help or "").strip().splitlines()[0] == LAZY_COMMANDS[name][2]
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0 and LAZY_COMMANDS[name][2][:30] in " ".join(result.output.split())
