"""The README runs as written: every ```python block, in order, in one namespace (the README
says they continue one another); its commands are the ones CI runs; its claims hold."""

import re
import shlex
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers as opt

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[tuple[int, str]]:
    """(first line number, code) of every fenced block in that language."""
    return [(README.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(rf"^```{language}\n(.*?)^```", README, re.S | re.M)]


PYTHON = _blocks("python")
_namespaces: dict[int, dict] = {}  # block index -> the namespace after running blocks 0..index


def _namespace_after(index: int) -> dict:
    """Runs blocks 0..index in one namespace (reusing a prefix already run in this process,
    so each block runs once in order, and any block can still run alone, e.g. under xdist)."""
    if index < 0:
        return {"__name__": "readme"}
    if index not in _namespaces:
        namespace = dict(_namespace_after(index - 1))
        line, code = PYTHON[index]
        exec(compile("\n" * (line - 1) + code, str(ROOT / "README.md"), "exec"), namespace)
        _namespaces[index] = namespace
    return _namespaces[index]


def test_the_readme_has_its_python_blocks():
    assert len(PYTHON) >= 5, "the README lost python examples"


@pytest.mark.parametrize("index", range(len(PYTHON)),
                         ids=[f"README.md:{line}" for line, _ in PYTHON])
def test_python_block_runs_as_written(index):
    _namespace_after(index - 1)  # the blocks before it, as a reader who ran them
    namespace = _namespace_after(index)
    if "val_accuracy" in PYTHON[index][1]:  # the hand-written model trains, not just runs
        assert namespace["history"]["val_accuracy"][-1] > 0.9


def _commands(code: str) -> list[str]:
    return [line.split("#")[0].strip() for line in code.splitlines()
            if line.split("#")[0].strip()]


def _ci_main_pass() -> list[list[str]]:
    """The commands of .ci/run before its floor pass, split into words."""
    text = (ROOT / ".ci" / "run").read_text().split("# floor pass")[0]
    commands = []
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        commands += [shlex.split(part) for part in line.split("&&") if part.strip()]
    return commands


def test_quickstart_commands_are_the_documented_ones():
    quickstart = README.split("## Quickstart")[1].split("##")[0]
    code, = re.findall(r"```bash\n(.*?)```", quickstart, re.S)
    assert _commands(code) == ['pip install -e ".[examples]" && python -m fnn',
                               'pip install -e ".[test]" && pytest']
    # the test command is the one CI runs (its main pass), in the same words
    ci = _ci_main_pass()
    assert ["pip", "install", "-e", ".[test]"] in ci and ["pytest"] in ci
    development = README.split("## Development")[1]
    assert 'pip install -e ".[test]" && pytest' in development


# every optimizer, three steps, float32: the README says packed params give the same results
# "to float32 rounding" (measured: at most 3 units in the last place; bounded here at 8)
@pytest.mark.parametrize("name, make", [
    ("sgd", lambda: opt.sgd(0.01)), ("momentum", lambda: opt.momentum(0.01, nesterov=True)),
    ("adagrad", lambda: opt.adagrad(0.01)), ("rmsprop", lambda: opt.rmsprop(0.01)),
    ("adam", lambda: opt.adam(0.01)), ("adamw", lambda: opt.adamw(0.01)),
])
def test_packed_params_equal_plain_ones_to_float32_rounding(name, make):
    assert "identical results" not in README
    assert "same results to float32 rounding" in README
    rng = np.random.default_rng(0)
    shapes = [(300, 300), (30, 20), (20,), (5, 5)]  # one leaf on the one-pass kernels, small ones
    params = {f"l{i}": jnp.asarray(rng.uniform(1, 2, s) * rng.choice([-1, 1], s), jnp.float32)
              for i, s in enumerate(shapes)}
    grads = [{k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
             for _ in range(3)]
    tx = make()

    @jax.jit
    def steps(params, grads):
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = opt.apply_updates(params, updates)
        return params

    plain = steps(params, grads)
    packed = opt.unpack(steps(opt.pack(params), [opt.pack(g) for g in grads]))
    for k in params:
        a, b = np.asarray(plain[k]), np.asarray(packed[k])
        ulps = np.abs(a.astype(np.float64) - b) / np.spacing(np.abs(a))
        assert ulps.max() <= 8, (k, ulps.max())


def test_declared_floors_are_the_ones_ci_and_the_readme_name():
    """pyproject's run-time floors are plain `name>=X` (the floor pass of .ci/run installs each as
    `==X` and runs the floor subset), and the README names the same versions."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = dict(re.fullmatch(r"([a-z0-9_.-]+)>=([0-9.]+)", d).groups() for d in deps)
    assert set(floors) == {"jax", "jaxlib", "numpy"}
    assert floors["jax"] == floors["jaxlib"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "# floor pass" in ci and "tests/test_floor_smoke.py" in ci
    intro = README.split("## Quickstart")[0]
    assert f"jax and jaxlib ≥ {floors['jax']}" in intro
    assert f"numpy ≥ {floors['numpy'].removesuffix('.0')}" in intro
