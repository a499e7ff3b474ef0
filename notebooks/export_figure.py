"""Refresh the README's figure: run a notebook at its full budget and save one of its figures.

    python notebooks/export_figure.py                       # 01_optimizers.ipynb, first figure
    python notebooks/export_figure.py NOTEBOOK INDEX OUT.png

The figure is the INDEX-th PNG the notebook displays (0 = the first), as the notebook's
inline backend rendered it, reduced to a 256-colour palette to keep the repository small.
"""

import base64
import io
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image  # matplotlib's own dependency

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    notebook_path = Path(argv[0]) if argv else HERE / "01_optimizers.ipynb"
    index = int(argv[1]) if len(argv) > 1 else 0
    out = Path(argv[2]) if len(argv) > 2 else HERE / "figures" / "optimizer_trajectories.png"
    notebook = nbformat.read(notebook_path, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        NotebookClient(notebook, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": scratch}}).execute()
    images = [output["data"]["image/png"] for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if "image/png" in output.get("data", {})]
    if index >= len(images):
        sys.exit(f"{notebook_path.name} displays {len(images)} figures; no figure {index}")
    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(base64.b64decode(images[index]))).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
