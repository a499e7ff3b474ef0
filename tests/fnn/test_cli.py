"""python -m fnn: the table and the PNG on a small budget, search, help, bad arguments."""

import os
import subprocess
import sys

import pytest

from fnn import cli


def test_main_job_prints_the_table_and_writes_the_png(tmp_path):
    png = tmp_path / "curves.png"
    out = subprocess.run([sys.executable, "-m", "fnn", "--epochs", "3", "--no-progress",
                          "--output", str(png)], capture_output=True, text=True, timeout=600,
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
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for word in ("train", "search", "gradcheck"):
        assert word in text
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--optimizer", "--epochs", "--learning-rate", "--seed", "--output",
                   "--no-plot", "--batch-size", "--preprocess"):
        assert option in text


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-1"], "must be a positive int"),
    (["--epochs", "many"], "invalid"),
    (["--optimizer", "lion"], "invalid choice: 'lion'"),
    (["--learning-rate", "0"], "must be a positive float"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["search", "--lr-range", "0.1", "0.01"], "needs LOW < HIGH"),
    (["frobnicate"], "unrecognized arguments: frobnicate"),
])
def test_bad_arguments_exit_with_a_message_not_a_traceback(argv, message):
    out = subprocess.run([sys.executable, "-m", "fnn", *argv], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
