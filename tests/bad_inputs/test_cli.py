"""python -m fnn with bad arguments: a message naming the option and exit status 2, before any
training; training that diverges: a message naming the optimizer and the rate, exit status 1."""

import math

import pytest

import fnn.cli as cli

# argparse rejects these while parsing: SystemExit(2), usage and message on stderr
PARSE_ERRORS = [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "2.5"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--hidden", "0"], "--hidden"),
    (["--dropout", "1"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--dropout", "nan"], "--dropout"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--learning-rate", "inf"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--learning-rate", "fast"], "--learning-rate"),
    (["--weight-decay", "-1e-4"], "--weight-decay"),
    (["--weight-decay", "inf"], "--weight-decay"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64)], "--seed"),  # was an OverflowError traceback
    (["--seed", str(2**32)], "--seed"),  # JAX keeps 32 bits: this was seed 0's run again
    (["--seed", "1.5"], "--seed"),
    (["--optimizer", "lion"], "--optimizer"),
    (["--optimizers", "adam"], "--optimizers"),
    (["--dataset", "cifar10"], "--dataset"),
    (["--preprocess", "whiten"], "--preprocess"),
    (["--no-plot", "--output", "curves.png"], "--output"),
    (["--sharding", "fsdp"], "--devices"),  # fsdp needs devices to split over
    (["--sharding", "zero"], "--sharding"),
    (["--devices", "0"], "--devices"),
    (["search", "--sharding", "fsdp"], "--sharding"),
    (["search", "--trials", "0"], "--trials"),
    (["search", "--optimizer", "all"], "--optimizer"),
    (["search", "--lr-range", "0.1", "0.01"], "--lr-range"),
    (["search", "--lr-range", "0", "0.1"], "--lr-range"),
    (["search", "--wd-range", "1e-3", "1e-3"], "--wd-range"),
    (["search", "--refine", "9"], "--refine"),
    (["search", "--top", "0"], "--top"),
    (["search", "--output", "x.png"], "--output"),
    (["gradcheck", "--seed", "-3"], "--seed"),
    (["gradcheck", "--epochs", "3"], "--epochs"),
]


@pytest.mark.parametrize("argv, option", PARSE_ERRORS, ids=[" ".join(a) for a, _ in PARSE_ERRORS])
def test_bad_option_exits_2_naming_it(argv, option, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert option in err, err
    assert "Traceback" not in err


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if a command gets as far as loading data and building the model."""
    def trained(args):
        raise AssertionError("the bad option was not reported before training")
    monkeypatch.setattr(cli, "experiment", trained)


def _output_cases():
    return [
        (lambda tmp: str(tmp / "missing" / "curves.png"), "does not exist"),
        (lambda tmp: str(tmp / "a_file" / "curves.png"), "not a directory"),
        (lambda tmp: str(tmp / "curves.gif"), ".gif"),
        (lambda tmp: str(tmp / "curves.png.bak"), ".bak"),
        (lambda tmp: "", "empty"),
        (lambda tmp: "   ", "empty"),
        (lambda tmp: str(tmp / "dir"), "is a directory"),  # dir + .png is a directory
        # a directory nobody can create files in, root included (root ignores mode bits)
        (lambda tmp: "/proc/fnn-curves.png", "cannot create a file"),
    ]


@pytest.mark.parametrize("case", range(len(_output_cases())))
def test_bad_output_is_reported_before_training(case, tmp_path, no_training, capsys):
    make, message = _output_cases()[case]
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "dir.png").mkdir()
    assert cli.main(["--output", make(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "dir.png"]  # nothing left


def test_output_without_matplotlib_is_reported_before_training(tmp_path, no_training, capsys,
                                                                monkeypatch):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli.main(["--output", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "matplotlib" in err and "--no-plot" in err


@pytest.mark.parametrize("command", ["train", "search"])
def test_batch_size_larger_than_the_data_is_an_error(command, capsys):
    # was one step per epoch on the whole training set, silently
    assert cli.main([command, "--batch-size", "5000", "--no-progress" if command == "train"
                     else "--trials=1", *(["--no-plot"] if command == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 5000" in err and "1438 training examples" in err


def test_diverging_training_exits_1_naming_optimizer_and_rates(capsys):
    # was exit status 0 with a table of nan losses
    code = cli.main(["--optimizer", "sgd", "--learning-rate", "1e30", "--weight-decay", "0.5",
                     "--epochs", "1", "--no-plot", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "sgd" in err and "learning rate 1e+30" in err and "weight decay 0.5" in err
    assert "diverged" in err and "nan" in err


def test_a_non_finite_loss_error_from_fit_exits_1_naming_the_run(monkeypatch, capsys):
    """fnn.train.fit may raise (a FloatingPointError) instead of returning a nan history."""
    def diverging_fit(*args, **kwargs):
        raise FloatingPointError("the loss is inf at step 3.")
    monkeypatch.setattr(cli.train, "fit", diverging_fit)
    code = cli.main(["--optimizer", "adam", "--learning-rate", "2", "--epochs", "1", "--no-plot",
                     "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "adam at learning rate 2" in err and "the loss is inf at step 3" in err


def test_search_where_every_trial_diverges_exits_1(capsys):
    code = cli.main(["search", "--trials", "2", "--epochs", "1", "--lr-range", "1e25", "1e30"])
    assert code == 1
    err = capsys.readouterr().err
    assert "every one of the 2 trials" in err and "--lr-range" in err


def test_search_ranks_diverged_trials_last_with_nan_accuracy(monkeypatch, capsys):
    """A diverged model still has an accuracy (its nan logits argmax to class 0); it was ranked
    by it as if it were a result."""
    def fake_parallel_fit(loss_fn, tx, state, configs, *args, **kwargs):
        return [{"train_loss": math.nan if i % 2 == 0 else 0.1 + i,
                 "val_accuracy": 0.99 if i % 2 == 0 else 0.5 - 0.01 * i}
                for i in range(len(configs))]
    monkeypatch.setattr(cli.tuning, "parallel_fit", fake_parallel_fit)
    assert cli.main(["search", "--trials", "4", "--epochs", "1", "--top", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[2:6]]
    accuracies = [row[3] for row in rows]
    assert accuracies[:2] == ["0.49", "0.47"] and accuracies[2:] == ["nan", "nan"], out
    assert "2 of 4 trials diverged" in out


def test_out_of_memory_is_a_message_naming_the_size_options(monkeypatch, capsys):
    def oom(args, out=None):
        raise cli.jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4000000000000 bytes.")
    monkeypatch.setattr(cli, "run_search", oom)
    assert cli.main(["search", "--hidden", "1000000"]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "--hidden" in err and "--trials" in err
