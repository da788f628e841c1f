"""The README's two set-up commands are what CI runs and what the CLI offers."""

import re
from pathlib import Path

from click.testing import CliRunner

from mlxstore.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    assert commands[0] == 'pip install -e ".[cpu]" && mlxstore demo'
    assert commands[1].startswith('pip install -e ".[cpu,test]" && python -m pytest')


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "grep" in ci
    assert re.search(r"^pip install -e \"\.\[cpu,test\]\"", _setup_commands()[1])


def test_demo_command_is_registered():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "generate", "pack", "info", "verify"):
        assert command in result.output
