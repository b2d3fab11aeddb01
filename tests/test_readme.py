"""The README's and the docs' commands and code work as written."""

import dataclasses
import json
import re
from pathlib import Path

from jaxae import losses

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
LIBRARY = (ROOT / "docs" / "library.md").read_text()


def blocks(language, text=LIBRARY):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_setup_is_two_commands_each_working_alone_on_a_fresh_clone():
    """.ci/run runs these two lines verbatim, in order, from a fresh clone."""
    setup = README.split("## Set-up", 1)[1]
    main_job, tests = re.search(r"```bash\n(.*?)```", setup, flags=re.S).group(1).splitlines()
    fresh_venv = "python3 -m venv .venv && . .venv/bin/activate && pip install -e "
    assert main_job == fresh_venv + ". && python -m experiments.vae"
    assert tests == fresh_venv + '".[dev]" && python -m pytest'
    assert "## Set-up" in (ROOT / ".ci" / "run").read_text()


def test_library_examples_run_in_order(capsys, tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)  # the examples write runs/ where they run
    monkeypatch.setattr(losses, "OBJECTIVES", dict(losses.OBJECTIVES))  # the registrations end with the test
    fit, measure, register, renyi, script, samples = blocks("python")
    trained = {}
    exec(compile(fit, "library.md", "exec"), trained)
    test_loss = float(capsys.readouterr().out.strip())
    assert 100 < test_loss < 250  # -ELBO of a VAE after two short epochs, in nats
    assert trained["codes"].shape == (5, 8)
    exec(compile(measure, "library.md", "exec"), trained)  # uint8 images straight from the dataset
    assert trained["nll"].shape == (200,) and 50 < float(capsys.readouterr().out.strip()) < 250

    registered = {}
    exec(compile(register, "library.md", "exec"), registered)
    assert json.loads((tmp_path / "runs" / "beta_vae" / "config.json").read_text())["objective"] == "beta_vae"
    assert "epoch 1/1" in capsys.readouterr().out  # the library says what it does
    exec(compile(renyi, "library.md", "exec"), registered)
    assert capsys.readouterr().out == ""  # unless asked to be quiet
    summary = json.loads((tmp_path / "runs" / "renyi" / "summary.json").read_text())
    assert 50 < summary["test_loss"] < 250 and summary["epochs"] == 1

    name, command = re.match(r"# (\S+), run as: (.*)\n", script).groups()
    (tmp_path / name).write_text(script)
    argv = command.split()[2:] + ["--train-images", "2048", "--test-images", "500", "--workdir", "runs/cli"]
    done = subprocess.run([sys.executable, name, *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((tmp_path / "runs" / "cli" / "config.json").read_text())
    assert (saved["objective"], saved["objective_samples"]) == ("renyi", 5)
    assert "vae: test loss" in done.stdout.splitlines()[-1]

    exec(compile(samples, "library.md", "exec"), {})
    assert (tmp_path / "runs" / "beta_vae" / "prior_samples.png").read_bytes().startswith(b"\x89PNG")


def test_the_docs_tables_are_the_ones_the_committed_runs_give():
    from experiments import tables

    for name in tables.PAGES:
        assert tables.updated_page(name) == (tables.DOCS / name).read_text(), "run python -m experiments.tables"


def test_the_readme_links_every_page_of_the_docs_and_every_link_resolves():
    pages = sorted(path.name for path in (ROOT / "docs").glob("*.md"))
    assert sorted(re.findall(r"\]\(docs/([a-z_]+\.md)\)", README)) == pages
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links {target}, which is not there"


def test_results_rows_cite_the_configs_their_runs_used():
    from experiments import tables
    from jaxae.config import RESUMABLE_FIELDS, Config

    untrained = RESUMABLE_FIELDS - {"epochs"}  # which epochs were drawn, where the data came from
    checked = 0
    for row in tables.ROWS:
        path = tables.RESULTS / row.folder / (row.variant or "") / "config.json"
        if path.exists():
            cited = tables.command_config(row.command, row.variant)
            used = Config.from_json(json.loads(path.read_text()))
            assert dataclasses.replace(used, **{name: getattr(cited, name) for name in untrained}) == cited, row
            checked += 1
    assert checked >= 7  # the four models, the seed study and both full-budget NLL runs


def test_budgets_name_the_gpu_a_run_used_and_the_cpu_of_the_others():
    from experiments import tables

    budgets = {}
    for row in tables.ROWS:
        summary = json.loads((tables.RESULTS / row.folder / "summary.json").read_text())
        budgets[row.folder] = tables.budget(tables.command_config(row.command, row.variant), row, summary)
    assert budgets["iwae_gpu"].endswith("s/epoch on one NVIDIA H200"), budgets["iwae_gpu"]
    cpu = json.loads((tables.RESULTS / "iwae" / "iwae-1l-k1" / "summary.json").read_text())["per_seed"][0]["host"]
    assert budgets["iwae"].endswith(f"s/epoch on {cpu}") and "H200" not in budgets["iwae"]


def test_the_flag_list_names_every_flag_of_the_scripts():
    from experiments import cli, vae

    paragraph = README.split("Flags (each script")[1].split("\n\n")[0]
    listed = set(re.findall(r"--[a-z][a-z0-9-]*", paragraph)) - {"--help"}
    parser = cli.build_parser(vae.DEFAULTS, vae.__doc__)
    flags = {option for action in parser._actions for option in action.option_strings if option.startswith("--")}
    assert listed == flags - {"--help"} - {f for f in flags if f.startswith("--no-")}
