"""The notebooks run top to bottom on CPU with JAXAE_SMOKE=1, and produce sound values."""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, workdir: Path, monkeypatch) -> dict:
    """Runs ``notebooks/<name>.ipynb`` in ``workdir`` and returns its ``results`` dict."""
    monkeypatch.setenv("JAXAE_SMOKE", "1")
    monkeypatch.setenv("TFDS_DATA_DIR", str(workdir / "tensorflow_datasets"))
    # the kernel spec starts "python": make it this interpreter, which has jaxae installed
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import json\nprint(json.dumps(results))"))
    where = {"metadata": {"path": str(workdir)}}
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources=where)
    client.execute()
    (output,) = [o for o in notebook.cells[-1].outputs if o.get("name") == "stdout"]
    return json.loads(output["text"])


@pytest.mark.parametrize("name", ["colab_tpu", "extend"])
def test_notebooks_are_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "JAXAE_SMOKE" in code[1].source  # the parameters cell, right after the install cell


@pytest.mark.slow
def test_colab_notebook_trains_saves_and_restores(tmp_path, monkeypatch):
    results = execute("colab_tpu", tmp_path, monkeypatch)
    assert results["backend"] == "cpu" and results["devices"] >= 1
    assert results["data_source"] != "tfds"  # offline: TFDS cannot prepare MNIST here, so the fallback ran
    assert results["epochs"] == 2
    assert results["final_test_loss"] < 0.8 * results["initial_test_loss"]  # -ELBO in nats fell
    assert results["restored_equal"] is True
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["1", "2"]
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == ["loss.png", "reconstructions.png", "samples.png"]


@pytest.mark.slow
def test_extend_notebook_builds_and_trains_new_models(tmp_path, monkeypatch):
    results = execute("extend", tmp_path, monkeypatch)
    kl = {float(beta): value for beta, value in results["kl"].items()}
    assert kl[4.0] < 0.8 * kl[1.0]  # a heavier KL weight gives a code closer to the prior
    assert results["objectives"] == {"1.0": "beta_vae_1", "4.0": "beta_vae_4"}  # registered, trained by name
    for beta in ("1", "4"):  # each a whole run: checkpoints, figures, summary
        run = tmp_path / "runs" / "extend" / f"beta_{beta}"
        assert (run / "summary.json").exists() and (run / "figures" / "loss.png").exists()
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2"]
    assert all(abs(value - 1) < 1e-4 for value in results["integrals"].values())  # a normalised density
    for by_quadrature, closed_form in results["means"].values():
        assert by_quadrature == pytest.approx(closed_form, abs=1e-4)
    losses, mse = results["continuous_bernoulli_losses"], results["continuous_bernoulli_mse"]
    assert losses[-1] < losses[0] and mse[-1] < mse[0]
    assert (tmp_path / "runs" / "extend" / "reconstructions.png").stat().st_size > 0


def test_notebooks_install_from_the_declared_repository_and_open_in_colab_from_the_readme():
    import re
    import tomllib

    root = NOTEBOOKS.parent
    repository = tomllib.loads((root / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    readme = (root / "README.md").read_text()
    owner_name = repository.removeprefix("https://github.com/")
    for name, accelerator in (("colab_tpu", "TPU"), ("extend", None)):
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        install = notebook.cells[1].source
        assert f'REPOSITORY = "{repository}"' in install and "pyproject.toml" in install
        assert notebook.metadata.get("accelerator") == accelerator  # a TPU only where the notebook uses one
        link = f"https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/{name}.ipynb"
        assert f"[Open in Colab]({link})" in readme
    assert len(re.findall(r"colab\.research\.google\.com/github/", readme)) == 2
