"""The Colab notebook executes here too, in smoke mode (one epoch on a subset), so it cannot rot."""

import nbformat
from nbclient import NotebookClient

from .conftest import ROOT


def test_notebook_runs_in_smoke_mode(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MNIST_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("KIT_NOTEBOOK_OUT", str(tmp_path))
    nb = nbformat.read(ROOT / "notebooks" / "reproduce_best.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    ).execute()
    text = "\n".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert "EPOCH  1/1" in text and "Total params" in text and "RF at the head's input" in text and "VERDICT:" in text
    runs = [p for p in tmp_path.iterdir() if (p / "epochs.csv").is_file()]
    assert len(runs) == 1 and (runs[0] / "curves.png").is_file()
