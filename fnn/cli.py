"""``python -m fnn``: the main job, a hyperparameter search, and gradient checks.

    python -m fnn                       # train the digits MLP with five optimizers, plot losses
    python -m fnn train --optimizer adam --epochs 30 --learning-rate 1e-3
    python -m fnn --dataset mnist       # MNIST (or fashion_mnist), downloaded once and cached
    python -m fnn search --trials 16    # random log-scale search, all trials in one vmapped program
    python -m fnn gradcheck             # finite differences against jax.grad, layer by layer
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import secrets
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optimizers as opt

from . import data, train, tuning

# learning rates that train the digits MLP well with each optimizer
DEFAULT_RATES = {"sgd": 0.1, "momentum": 0.01, "adagrad": 0.05, "rmsprop": 1e-3, "adam": 1e-3}
DEFAULT_OUTPUT = "loss_curves.png"
PLOT_FORMATS = ("png", "pdf", "svg")  # written by matplotlib's Agg backend with no extra software


class DivergedError(FloatingPointError):
    """A run's training loss became NaN or infinite (``python -m fnn`` exits with status 1)."""


def make_optimizer(name: str, learning_rate: float, weight_decay: float = 0.0) -> opt.Optimizer:
    """The optimizer ``name`` (one of DEFAULT_RATES) with L2 weight decay on weight matrices."""
    base = {"sgd": opt.sgd, "momentum": opt.momentum, "adagrad": opt.adagrad,
            "rmsprop": opt.rmsprop, "adam": opt.adam}[name](learning_rate)
    decay = opt.add_decayed_weights(weight_decay, mask=_weights_only)
    return opt.chain(decay, base)


def _weights_only(params: Any) -> Any:
    return jax.tree_util.tree_map(lambda p: len(p.shape) >= 2, params)


def mlp(hidden: int = 256, rate: float = 0.2, classes: int = 10):
    """The main job's model: (Dense → BatchNorm → ReLU → Dropout) × 2 → Dense."""
    import fnn

    block = [fnn.Dense(hidden), fnn.BatchNorm(), fnn.Relu(), fnn.Dropout(rate)]
    return fnn.serial(*block, *[fnn.Dense(hidden), fnn.BatchNorm(), fnn.Relu(),
                                fnn.Dropout(rate)], fnn.Dense(classes))


PREPROCESSING = {"center": data.center, "standardize": data.standardize,
                 "pca": data.pca_whiten, "zca": data.zca_whiten,
                 "none": lambda x: (lambda z: jnp.asarray(z))}


def init_model(model, seed: int, features: int):
    """``(params, state)`` of ``model.init`` run as one compiled program (run eagerly, every
    initializer op would compile on its own)."""
    return jax.jit(lambda key: model.init(key, (-1, features))[1:])(jax.random.key(seed + 1))


def load(dataset: str, seed: int, preprocess: str = "center", progress: bool = True):
    """A train/validation split (80/20) of a built-in data set (for MNIST and Fashion-MNIST, of
    their train split), preprocessed with statistics of the training part only."""
    loader = data.DATASETS[dataset]
    downloads = "progress" in inspect.signature(loader).parameters  # mnist, fashion_mnist
    x, y = loader(progress=progress) if downloads else loader()
    (x_train, y_train), (x_val, y_val) = data.train_val_split(jax.random.key(seed), (x, y), 0.2)
    prep = PREPROCESSING[preprocess](x_train)
    classes = int(y.max()) + 1
    return (prep(x_train), jnp.asarray(y_train)), (prep(x_val), jnp.asarray(y_val)), classes


# --seed seeds jax.random.key(seed + k) for k <= 8; without x64, JAX keeps only the low 32 bits of a
# seed, so a larger seed would silently repeat a smaller one's run
MAX_SEED = 2**31 - 1


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a positive {kind.__name__}, got {text!r}") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def _float_in(text: str, low: float, high: float | None, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not (math.isfinite(value) and value >= low and (high is None or value < high)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    return _float_in(text, 0.0, None, "a number >= 0")


def _probability(text: str) -> float:
    return _float_in(text, 0.0, 1.0, "a number in [0, 1)")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int in [0, {MAX_SEED}], got {text!r}") \
            from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an int in [0, {MAX_SEED}], got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument("--dataset", choices=sorted(data.DATASETS), default="digits",
                        help="built-in data set (default: digits, from scikit-learn); mnist and "
                             "fashion_mnist are downloaded on first use into $FNN_DATA_DIR "
                             "(default: ~/.cache/fnn/datasets)")
    parser.add_argument("--epochs", type=_positive(int), default=epochs,
                        help=f"epochs per run (default: {epochs})")
    parser.add_argument("--batch-size", type=_positive(int), default=64,
                        help="mini-batch size, at most the number of training examples "
                             "(default: 64)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="seed for the split, initialization, shuffling and dropout, "
                             f"0 to {MAX_SEED} (default: 0)")
    parser.add_argument("--hidden", type=_positive(int), default=256,
                        help="hidden units per layer (default: 256)")
    parser.add_argument("--dropout", type=_probability, default=0.2,
                        help="dropout rate, the drop probability, in [0, 1) (default: 0.2)")
    parser.add_argument("--preprocess", choices=list(PREPROCESSING), default="center",
                        help="input preprocessing fitted on the training split (default: center; "
                             "on digits, standardizing amplifies nearly constant pixels)")
    parser.add_argument("--devices", type=_positive(int), default=None, metavar="N",
                        help="train on N devices (a mesh over the first N; on the CPU, N virtual "
                             "devices are created), each batch split over them (default: one)")


class _FullHelp(argparse.Action):
    """``python -m fnn --help``: the commands, then every command's options."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # set by build_parser

    def __call__(self, parser, namespace, values, option_string=None):
        parts = [parser.format_help()]
        for name, command in self.commands.items():
            parts.append(f"\n{'=' * 20} python -m fnn {name} {'=' * 20}\n{command.format_help()}")
        sys.stdout.write("".join(parts))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fnn", description=__doc__.splitlines()[0], add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="With no command, runs `train` with every optimizer (options go to `train`).")
    help_action = parser.add_argument(
        "-h", "--help", action=_FullHelp, help="show this message, every command's options, "
                                                "and exit")
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("train", help="train the MLP with one or all optimizers (default)")
    _common(run, 30)
    run.add_argument("--optimizer", choices=["all", *DEFAULT_RATES], default="all",
                     help="optimizer to train with (default: all five)")
    run.add_argument("--learning-rate", type=_positive(float), default=None,
                     help="learning rate (default: a tuned rate per optimizer: "
                          + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_RATES.items()) + ")")
    run.add_argument("--weight-decay", type=_non_negative_float, default=0.0,
                     help="L2 weight decay on weight matrices (default: 0)")
    run.add_argument("--output", default=None, metavar="PATH",
                     help="where to write the plot of the loss curves: a file name ending in "
                          f"{', '.join('.' + f for f in PLOT_FORMATS)} (none: .png is added) or "
                          f"an existing directory (the file {DEFAULT_OUTPUT} in it); checked "
                          f"before training (default: {DEFAULT_OUTPUT})")
    run.add_argument("--no-plot", action="store_true",
                     help="do not write the plot (not with --output)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    run.add_argument("--sharding", choices=["replicated", "fsdp"], default="replicated",
                     help="with --devices: replicate params and optimizer state on every device, "
                          "or split them over the devices (FSDP) (default: replicated)")

    search = commands.add_parser(
        "search", help="random search of learning rate and weight decay on a log scale, "
                       "every trial trained at once with jax.vmap")
    _common(search, 20)
    search.add_argument("--optimizer", choices=list(DEFAULT_RATES), default="adam",
                        help="optimizer whose hyperparameters are searched (default: adam)")
    search.add_argument("--trials", type=_positive(int), default=16,
                        help="number of random configurations (default: 16)")
    search.add_argument("--lr-range", type=_positive(float), nargs=2, default=(1e-4, 1e-1),
                        metavar=("LOW", "HIGH"), help="learning-rate range (default: 1e-4 1e-1)")
    search.add_argument("--wd-range", type=_positive(float), nargs=2, default=(1e-6, 1e-2),
                        metavar=("LOW", "HIGH"), help="weight-decay range (default: 1e-6 1e-2)")
    search.add_argument("--refine", type=int, default=0, choices=range(0, 5), metavar="ROUNDS",
                        help="coarse-to-fine rounds around the best 3 trials, 0 to 4 "
                             "(default: 0)")
    search.add_argument("--top", type=_positive(int), default=5,
                        help="trials to print (default: 5)")

    check = commands.add_parser("gradcheck", help="check every layer's gradient against "
                                                  "finite differences in float64")
    check.add_argument("--seed", type=_seed, default=0,
                       help=f"seed for inputs and params, 0 to {MAX_SEED} (default: 0)")
    for command in (run, search, check):
        command.set_defaults(command_parser=command)  # its own usage line for errors
    help_action.commands = dict(commands.choices)
    return parser


# ------------------------------------------------------------------ commands


def experiment(args: argparse.Namespace):
    """The data split, the MLP and its loss and evaluation functions that train and search share."""
    (x_train, y_train), val, classes = load(args.dataset, args.seed, args.preprocess,
                                            progress=not getattr(args, "no_progress", False))
    if args.batch_size > len(x_train):
        raise ValueError(f"--batch-size {args.batch_size} is larger than the {len(x_train)} "
                         f"training examples of {args.dataset}; an epoch would be one step on "
                         f"all of them. Use at most {len(x_train)}.")
    model = mlp(args.hidden, args.dropout, classes)
    loss_fn, eval_fn = train.classifier(model)
    return (x_train, y_train), val, classes, model, loss_fn, eval_fn


def run_training(args: argparse.Namespace, out=None) -> list[dict]:
    """Trains the MLP with each optimizer; prints the table and writes the plot.

    The optimizers are the branches of one ``optimizers.switch``, so a single
    compiled epoch program serves all of them: the choice of optimizer is data.
    """
    out = sys.stdout if out is None else out
    output = None if args.no_plot else output_path(args.output)  # fails now, not after training
    mesh = _mesh(args)  # before JAX starts: on the CPU, --devices N makes N devices
    total = time.perf_counter()
    (x_train, y_train), val, classes, model, loss_fn, eval_fn = experiment(args)
    names = list(DEFAULT_RATES) if args.optimizer == "all" else [args.optimizer]
    rates = {name: args.learning_rate or DEFAULT_RATES[name] for name in names}
    tx = opt.switch(*[make_optimizer(name, rates[name], args.weight_decay) for name in names])
    key = jax.random.key(args.seed + 2)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)

    # compile the epoch program from shapes alone, in a thread, while the model initializes
    start = time.perf_counter()
    abstract = jax.eval_shape(lambda: train.init_train_state(
        *init_model(model, args.seed, x_train.shape[1]), tx))
    sharding = getattr(args, "sharding", "replicated") if mesh is not None else None
    epoch = train.jit_epoch(loss_fn, tx, args.batch_size, mesh=mesh, sharding=sharding,
                            state=abstract)
    with ThreadPoolExecutor(max_workers=1) as pool:
        compiling = pool.submit(lambda: epoch.lower(abstract, (x_train, y_train), key).compile())
        params, model_state = init_model(model, args.seed, x_train.shape[1])
        compiled = compiling.result()
    compile_time = time.perf_counter() - start

    rows, histories = [], {}
    for index, name in enumerate(names):
        start = time.perf_counter()
        state = train.init_train_state(params, model_state, tx)
        state = state._replace(opt_state=state.opt_state._replace(index=jnp.int32(index)))
        run = f"{name} at learning rate {rates[name]:g}" + (
            f" and weight decay {args.weight_decay:g}" if args.weight_decay else "")
        try:
            state, history = train.fit(loss_fn, tx, state, (x_train, y_train), key=key,
                                       epochs=args.epochs, batch_size=args.batch_size,
                                       val_data=val, eval_fn=eval_fn, epoch_fn=compiled,
                                       progress=not args.no_progress, description=name,
                                       mesh=mesh, sharding=sharding)
        except FloatingPointError as error:
            raise DivergedError(f"training {run} diverged: {error} Try a smaller "
                                "--learning-rate or --weight-decay.") from error
        _check_finite(history["train_loss"], run)
        seconds = time.perf_counter() - start
        histories[name] = history
        rows.append({"optimizer": name, "learning_rate": rates[name],
                     "train_loss": history["train_loss"][-1],
                     "val_accuracy": history["val_accuracy"][-1], "time": seconds,
                     "steps_per_s": steps_per_epoch * args.epochs / seconds})
    total = time.perf_counter() - total
    print(f"{args.dataset}: {len(x_train)} training / {len(val[0])} validation examples "
          f"({args.preprocess}), MLP {x_train.shape[1]}-{args.hidden}-{args.hidden}-{classes} "
          f"with BatchNorm and Dropout({args.dropout:g}), batch {args.batch_size}, "
          f"{args.epochs} epochs" + (f", {args.devices} devices ({sharding})" if mesh else ""),
          file=out)
    print(f"{'optimizer':10} {'lr':>8} {'train loss':>10} {'val acc':>8} {'time (s)':>9} "
          f"{'steps/s':>8}", file=out)
    for r in rows:
        print(f"{r['optimizer']:10} {r['learning_rate']:8.2g} {r['train_loss']:10.4f} "
              f"{r['val_accuracy']:8.4f} {r['time']:9.2f} {r['steps_per_s']:8.0f}", file=out)
    print(f"one program for every optimizer (optimizers.switch): compiled in {compile_time:.2f} s "
          "(with model initialization)", file=out)
    print(f"total wall time: {total:.2f} s (data, compilation and training)", file=out)
    if output is not None:
        plot_losses(histories, output)
        print(f"loss curves written to {output}", file=out)
    return rows


def _check_finite(losses: list[float], run: str) -> None:
    bad = [epoch for epoch, loss in enumerate(losses, 1) if not math.isfinite(loss)]
    if bad:
        raise DivergedError(
            f"training {run} diverged: the training loss is {losses[bad[0] - 1]} at epoch "
            f"{bad[0]} of {len(losses)}. Try a smaller --learning-rate or --weight-decay.")


def output_path(text: str | os.PathLike | None) -> Path:
    """The file ``train --output`` writes, checked before any training.

    An existing directory gets ``loss_curves.png`` inside it, a name with no
    extension gets ``.png``; the extension must be one of :data:`PLOT_FORMATS`,
    matplotlib must be installed, and the directory must exist and accept a new
    file (tried for real: permission bits alone say nothing to root).

    Raises:
      ValueError: naming ``--output`` and what is wrong.
    """
    given = DEFAULT_OUTPUT if text is None else os.fspath(text)
    path = Path(given).expanduser()
    if not given.strip():
        raise ValueError("--output is empty; give a file name such as loss_curves.png.")
    if path.is_dir():
        path = path / DEFAULT_OUTPUT
    elif not path.suffix:
        path = path.with_name(path.name + ".png")
    if path.suffix[1:].lower() not in PLOT_FORMATS:
        raise ValueError(f"--output {given!r}: the extension {path.suffix!r} is not a plot format "
                         f"this command writes; use one of "
                         f"{', '.join('.' + f for f in PLOT_FORMATS)}.")
    if path.is_dir():
        raise ValueError(f"--output {given!r}: {str(path)!r} is a directory.")
    directory = path.parent
    if not directory.exists():
        raise ValueError(f"--output {given!r}: the directory {str(directory)!r} does not exist.")
    if not directory.is_dir():
        raise ValueError(f"--output {given!r}: {str(directory)!r} is not a directory.")
    try:
        _temporary_file(path).unlink()
    except OSError as error:
        raise ValueError(f"--output {given!r}: cannot create a file in {str(directory)!r} "
                         f"({error.strerror or error}).") from None
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--output: writing the plot needs matplotlib "
                         "(pip install -e \".[examples]\"), or pass --no-plot.")
    return path


def _temporary_file(path: Path) -> Path:
    """A new, empty, uniquely named file beside ``path`` (mode 0o666 less the umask)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temporary


def plot_losses(histories: dict, path: str | os.PathLike) -> None:
    """Training loss per epoch for each run, on a log scale, and validation accuracy.

    The figure is written to a temporary file beside ``path`` and renamed onto it
    (``os.replace``), so a reader, or another process writing the same path, never
    sees a partly written file. The format is ``path``'s extension.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in histories.items():
        epochs = np.arange(1, len(history["train_loss"]) + 1)
        ax_loss.plot(epochs, history["train_loss"], label=name)
        ax_acc.plot(epochs, history["val_accuracy"], label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    temporary = _temporary_file(path)
    try:
        with open(temporary, "wb") as file:
            fig.savefig(file, format=path.suffix[1:].lower(), dpi=100)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def run_search(args: argparse.Namespace, out=None) -> tuning.Results:
    out = sys.stdout if out is None else out
    mesh = _mesh(args)  # before JAX starts: on the CPU, --devices N makes N devices
    (x_train, y_train), val, classes, model, loss_fn, eval_fn = experiment(args)
    params, model_state = init_model(model, args.seed, x_train.shape[1])
    tx = make_optimizer(args.optimizer, DEFAULT_RATES[args.optimizer], 1e-4)
    state = train.init_train_state(params, model_state, tx)
    space = {"learning_rate": tuning.log_uniform(*args.lr_range),
             "weight_decay": tuning.log_uniform(*args.wd_range)}

    def objective(configs):
        results = tuning.parallel_fit(loss_fn, tx, state, configs, (x_train, y_train),
                                      key=jax.random.key(args.seed + 2), epochs=args.epochs,
                                      batch_size=args.batch_size, val_data=val, eval_fn=eval_fn,
                                      mesh=mesh)
        for metrics in results:  # a diverged model's accuracy is a number, but not a result
            if not math.isfinite(metrics["train_loss"]):
                metrics["val_accuracy"] = math.nan  # ranked last, shown as nan
        return results

    start = time.perf_counter()
    results = tuning.random_search(objective, space, key=jax.random.key(args.seed + 3),
                                   trials=args.trials, metric="val_accuracy", batched=True)
    for round_ in range(args.refine):
        space = tuning.refine(space, results, top=3)
        more = tuning.random_search(objective, space, key=jax.random.key(args.seed + 4 + round_),
                                    trials=args.trials, metric="val_accuracy", batched=True)
        results = tuning.Results(list(results) + list(more), "val_accuracy", "max")
    seconds = time.perf_counter() - start
    diverged = sum(not math.isfinite(t.metrics["train_loss"]) for t in results)
    if diverged == len(results):
        raise DivergedError(f"every one of the {len(results)} trials of {args.optimizer} "
                            f"diverged (non-finite training loss); try a lower --lr-range or "
                            f"--wd-range.")
    print(f"{len(results)} trials of {args.optimizer} on {args.dataset} ({args.epochs} epochs "
          f"each, vmapped): {seconds:.2f} s, {len(results) / seconds:.2f} trials/s", file=out)
    print(results.table(args.top), file=out)
    if diverged:
        print(f"{diverged} of {len(results)} trials diverged (non-finite training loss): "
              "val_accuracy nan, ranked last", file=out)
    return results


def _mesh(args: argparse.Namespace):
    """The mesh of ``--devices N`` (made once, before JAX starts: see ``main``), else None."""
    if not getattr(args, "devices", None):
        return None
    if getattr(args, "mesh", None) is None:
        from .sharding import device_mesh

        args.mesh = device_mesh(args.devices)
    return args.mesh


def run_gradcheck(args: argparse.Namespace, out=None) -> bool:
    out = sys.stdout if out is None else out
    from .layer_checks import check_all_layers

    return check_all_layers(seed=args.seed, out=out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fnn``: returns the exit status (0 ok, 1 diverged training, out of memory or a
    failed gradient check, 2 bad arguments); argparse exits with 2 itself for malformed
    options."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "search", "gradcheck", "-h", "--help"):
        argv = ["train", *argv]  # no command: train (options go to it)
    args = parser.parse_args(argv)
    command = args.command_parser
    if args.command == "train" and args.no_plot and args.output is not None:
        command.error("--output has no effect with --no-plot; drop one of them")
    if args.command == "train" and args.sharding != "replicated" and args.devices is None:
        command.error(f"--sharding {args.sharding} needs --devices N (N devices to split over)")
    if args.command == "search":
        for name in ("lr_range", "wd_range"):
            low, high = getattr(args, name)
            if not low < high:
                command.error(f"--{name.replace('_', '-')} needs LOW < HIGH, got {low:g} {high:g}")
    try:
        _mesh(args)  # first: on the CPU, --devices N creates N devices before JAX starts
        if args.command == "train":
            if not args.no_plot:
                args.output = output_path(args.output)
            run_training(args)
        elif args.command == "search":
            run_search(args)
        else:
            return 0 if run_gradcheck(args) else 1
    except FloatingPointError as error:
        print(f"python -m fnn {args.command}: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, ImportError, OSError) as error:
        print(f"python -m fnn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise  # not the user's doing: keep the traceback
        print(f"python -m fnn {args.command}: error: out of memory ({str(error).splitlines()[0]})."
              " Try a smaller --hidden, --batch-size or --trials.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"python -m fnn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
