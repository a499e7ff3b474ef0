"""python -m fnn: the table and the PNG on a small budget, search, help, bad arguments."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fnn import cli


def test_main_job_prints_the_table_and_writes_the_png(tmp_path):
    png = tmp_path / "curves.png"
    out = subprocess.run([sys.executable, "-m", "fnn", "--epochs", "3", "--no-progress",
                          "--output", str(tmp_path / "curves")],  # no extension: .png added
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("optimizer"))
    assert lines[header].split() == ["optimizer", "lr", "train", "loss", "val", "acc", "time",
                                     "(s)", "steps/s"]
    rows = [line.split() for line in lines[header + 1:header + 6]]
    assert [r[0] for r in rows] == ["sgd", "momentum", "adagrad", "rmsprop", "adam"]
    for r in rows:
        loss, accuracy, seconds = float(r[2]), float(r[3]), float(r[4])
        assert 0 < loss < 1.0 and 0.8 < accuracy <= 1.0 and seconds > 0
    assert "total wall time" in out.stdout
    assert lines[-1] == f"loss curves written to {png}"  # the path written, not the one given
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_runs_are_reproducible_with_a_fixed_seed(capsys):
    args = cli.build_parser().parse_args(["train", "--optimizer", "adam", "--epochs", "2",
                                          "--no-plot", "--no-progress", "--seed", "3"])
    first = cli.run_training(args)
    second = cli.run_training(args)
    assert first[0]["train_loss"] == second[0]["train_loss"]
    assert first[0]["val_accuracy"] == second[0]["val_accuracy"]
    other = cli.run_training(cli.build_parser().parse_args(
        ["train", "--optimizer", "adam", "--epochs", "2", "--no-plot", "--no-progress", "--seed",
         "4"]))
    assert other[0]["train_loss"] != first[0]["train_loss"]


def test_search_prints_the_best_trials(capsys):
    assert cli.main(["search", "--trials", "4", "--epochs", "1", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "4 trials of adam" in text and "trials/s" in text
    table = text.splitlines()[1:]
    assert table[0].split()[:4] == ["#", "learning_rate", "weight_decay", "val_accuracy"]
    assert len(table) == 4
    accuracies = [float(line.split()[3]) for line in table[1:]]
    assert accuracies == sorted(accuracies, reverse=True)


def test_help_documents_every_command_and_option(capsys):
    """``python -m fnn --help`` shows every option of every command (the README says so)."""
    parser = cli.build_parser()
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them only here
    assert set(commands) == {"train", "search", "gradcheck"}
    for name, command in commands.items():
        assert f"python -m fnn {name}" in text
        for action in command._actions:
            for option in action.option_strings:
                assert option in text, (name, option)
    for option in ("--optimizer", "--epochs", "--learning-rate", "--seed", "--output",
                   "--no-plot", "--batch-size", "--preprocess", "--trials", "--lr-range"):
        assert option in text
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "--learning-rate" in capsys.readouterr().out


def test_output_path_is_the_file_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    assert cli.output_path(None) == Path("loss_curves.png")
    assert cli.output_path("results") == Path("results") / "loss_curves.png"  # was results.png
    assert cli.output_path("noext") == Path("noext.png")
    assert cli.output_path("results/curves.SVG") == Path("results/curves.SVG")
    assert list(tmp_path.rglob("*")) == [tmp_path / "results"]  # the write test left nothing


def test_plot_formats_are_written_in_that_format(tmp_path):
    history = {"adam": {"train_loss": [1.0, 0.5], "val_accuracy": [0.5, 0.75]}}
    cli.plot_losses(history, tmp_path / "a.svg")
    cli.plot_losses(history, tmp_path / "a.pdf")
    assert b"<svg" in (tmp_path / "a.svg").read_bytes()[:500]
    assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")


WRITER = """
import sys
from fnn.cli import plot_losses
for i in range(int(sys.argv[2])):
    losses = [1.0 / (k + 1 + i) for k in range(40)]
    plot_losses({"adam": {"train_loss": losses, "val_accuracy": losses}}, sys.argv[1])
"""


def _complete_png(data: bytes) -> bool:
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


def test_concurrent_writers_never_leave_or_show_a_partial_png(tmp_path):
    """Four processes write one path; a reader polling it meanwhile sees only whole PNGs
    (savefig straight onto the path truncated it first: readers, and the last writer's file,
    could be partial)."""
    png = tmp_path / "curves.png"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(png), "6"],
                                env={**os.environ, "JAX_PLATFORMS": "cpu"}) for _ in range(4)]
    reads = 0
    while any(w.poll() is None for w in writers):
        try:
            data = png.read_bytes()
        except FileNotFoundError:
            continue
        reads += 1
        assert _complete_png(data), f"read {reads} saw a partial file of {len(data)} bytes"
    assert all(w.returncode == 0 for w in writers)
    assert _complete_png(png.read_bytes())
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary files left


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-1"], "argument --epochs: must be a positive int"),
    (["frobnicate"], "unrecognized arguments: frobnicate"),
])
def test_bad_arguments_exit_with_a_message_not_a_traceback(argv, message):
    """The real entry point (more cases, in-process: tests/bad_inputs/test_cli.py)."""
    out = subprocess.run([sys.executable, "-m", "fnn", *argv], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
