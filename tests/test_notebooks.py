"""Every notebook in notebooks/ runs to the end in quick mode (LOWBIT_QUICK=1) without an
error; the study notebooks' results tables hold the expected (model, precision, loss)
rows and their plots are saved under results/."""
import glob
import json
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks")
S0_MODELS = ["pure_cnn", "lenet", "alexnet_mnist", "vgg_mnist", "resnet20"]
S0_PRECISIONS = ["fixed16", "fixed8", "fp32", "fp16", "bf16"]
CE = "categorical_crossentropy"

# notebook -> (expected result rows, plots written under its results folder)
EXPECTED = {
    "01_fixed_vs_float.ipynb": (
        [[m, p, CE] for m in S0_MODELS for p in S0_PRECISIONS],
        ("s0_fixed_vs_float_quick", ["curves.png", "accuracy_size_energy.png", "time_memory.png"])),
    "03_binary_8bit_full.ipynb": (
        [[m, p, loss] for loss in (CE, "mse") for m in ("alexnet", "googlenet") for p in ("binary", "8-bit", "full")],
        ("s2_binary_8bit_full_quick", ["curves.png", "accuracy_size_energy.png"])),
    "04_forward_backward_precision.ipynb": (
        [["simple_cnn", p, CE] for p in ("fw32bw32", "fw16bw32", "fw16bw16")],
        ("s3_forward_backward_quick", ["curves.png", "accuracy_time_energy.png", "weights.png"])),
}
ROWS_MARK = "RESULT_ROWS="


def _notebooks():
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(NOTEBOOKS, "*.ipynb")))


def test_study_notebooks_exist():
    assert set(EXPECTED) <= set(_notebooks())


@pytest.mark.parametrize("name", _notebooks())
def test_notebook_runs_quick(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_QUICK", "1")
    with open(os.path.join(NOTEBOOKS, name)) as f:
        nb = nbformat.read(f, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "LOWBIT_QUICK" in first.source, f"{name}: the first code cell must hold the settings"
    if name in EXPECTED:  # report the results table's rows from inside the kernel
        nb.cells.append(nbformat.v4.new_code_cell(
            f"import json\nprint({ROWS_MARK!r} + json.dumps([[r['model'], r['precision'], r['loss_fn']] "
            "for r in results.rows]))"))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if name not in EXPECTED:
        return
    rows, (folder, plots) = EXPECTED[name]
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    got = json.loads(text.split(ROWS_MARK, 1)[1])
    assert got == rows
    # the results table was rendered (HTML) in the notebook, naming the CPU and the estimate
    html = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert any("CPU:" in h and "estimate" in h for h in html)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= len(plots)  # rendered inline
    for p in plots:
        path = tmp_path / "results" / folder / p
        assert path.exists() and os.path.getsize(path) > 10_000, path
    stored = [n for n in os.listdir(tmp_path / "results" / folder) if n.endswith(".json")]
    assert len(stored) == len(rows)
