"""The notebooks run top to bottom, as a reader runs them, and are committed without outputs.

Each notebook is executed with nbclient in a fresh kernel (the current interpreter's), with the
small-budget switch ``FNN_NOTEBOOK_SMALL=1`` that its parameter cell reads, in a scratch working
directory. A cell that raises, an assertion cell whose conclusion does not hold included, fails
the test with that cell's source and the error.
"""

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_optimizers", "02_training_mlp", "03_initialization", "04_gradient_checking",
            "05_hyperparameter_search", "06_normalization"]


def test_the_course_has_its_six_notebooks():
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("FNN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # the notebooks' own imports must find this checkout, whatever the kernel's cwd is
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name}: a cell failed\n{error}", pytrace=False)
    assert list(tmp_path.iterdir()) == [], "a notebook wrote files into its working directory"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    """What nbstripout would remove: outputs, execution counts, widget state."""
    notebook = json.loads(path.read_text())
    dirty = [index for index, cell in enumerate(notebook["cells"])
             if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert dirty == [], (f"{path.name}: code cells {dirty} carry outputs; clear them "
                         "(e.g. `jupyter nbconvert --clear-output --inplace` or nbstripout)")
    assert "widgets" not in notebook["metadata"], f"{path.name}: widget state is committed"


def _code_cells(path: Path) -> list[str]:
    return [cell.source for cell in nbformat.read(path, as_version=4).cells
            if cell.cell_type == "code"]


def test_every_notebook_opens_with_the_same_install_cell_and_a_parameter_cell():
    install = {_code_cells(path)[0] for path in NOTEBOOKS}
    assert len(install) == 1, "the notebooks' install cells differ"
    (cell,) = install
    assert "import fnn" in cell and "REPO_URL" in cell
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        assert 'os.environ.get("FNN_NOTEBOOK_SMALL")' in tagged[0].source, (
            f"{path.name}: the parameter cell must read the small-budget switch")


def test_the_readme_lists_every_notebook_with_a_colab_link_to_the_same_repository():
    (repo_url,) = set(re.findall(r'^REPO_URL = "(.*)"$', _code_cells(NOTEBOOKS[0])[0], re.M))
    owner_repo = repo_url.removeprefix("https://github.com/")
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        link = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{path.name}"
        assert link in readme, f"README: no Colab link {link}"
    assert repo_url in readme, "README must say which repository URL the notebooks install from"
    figure = re.search(r"!\[[^\]]*\]\((notebooks/[^)]+\.png)\)", readme)
    assert figure and (ROOT / figure.group(1)).stat().st_size < 200_000, (
        "README shows a small committed figure from notebook 1")
