"""`mlxstore demo`, the README's main job, streams under budget and matches mlx-lm."""

from click.testing import CliRunner

from mlxstore.cli.main import main


def test_demo_streams_and_matches(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path), "--max-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "tokens identical to mlx_lm.load: True; logits bit-identical: True" in result.output
    assert "expert reads" in result.output
