"""The open run: objectives, optimizers and schedules by name; any run restored; errors
that name the field; measurements that compile once."""

import contextlib
import dataclasses
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import cli
from jaxae import (
    build,
    checkpoint,
    config,
    data,
    evaluate,
    losses,
    models,
    optim,
    probe,
    restore,
    runner,
    train,
    validation,
)
from tests.helpers import read_metrics, restore_latest

ROOT = Path(__file__).resolve().parents[1]


def tiny(slice_config, **changes) -> config.Config:
    return dataclasses.replace(slice_config, widths=(16,), plot_epochs=(), **changes)


def trains(workdir_: Path) -> bool:
    """Whether the run in ``workdir_`` lowered its training loss and kept finite figures."""
    records = read_metrics(workdir_)
    return records[-1]["train_loss"] < records[0]["train_loss"] and np.all(np.isfinite(records[-1]["test_loss"]))


@pytest.mark.parametrize(
    ("registry", "name"),
    [("objective", n) for n in losses.OBJECTIVES]
    + [("optimizer", n) for n in optim.OPTIMIZERS]
    + [("schedule", n) for n in optim.SCHEDULES],
)
def test_every_registered_name_trains_a_real_run(registry, name, slice_config, tmp_path):
    stages = {"stages_count": 2, "stages_growth": 2} if name == "stages" else {}  # options only where read
    run = tiny(slice_config, epochs=3, learning_rate=3e-3, **stages, **{registry: name})
    runner.train_and_evaluate(run, tmp_path)
    assert trains(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())[registry] == name


def test_the_stages_schedule_gives_the_papers_rates_at_its_boundaries():
    steps = 3000  # steps per epoch: 60,000 images in batches of 20
    schedule = optim.stages(1e-3, steps_per_epoch=steps)
    assert optim.stage_epochs() == 3280
    start = 0
    for stage in range(8):  # stage i: 3**i epochs at 1e-3 * 10**(-i/7)
        rate = 1e-3 * 10 ** (-stage / 7)
        for step in (start * steps, (start + 3**stage) * steps - 1):
            np.testing.assert_allclose(float(schedule(step)), rate, rtol=1e-5)
        start += 3**stage
    np.testing.assert_allclose(float(schedule(3280 * steps)), 1e-4, rtol=1e-5)  # the last rate stays


def adam_second_step(g1: float, g2: float, *, b1: float, b2: float, eps: float, lr: float = 1e-3) -> float:
    """Adam's second update for gradients ``g1`` then ``g2``, from its definition (bias-corrected moments)."""
    mu = (b1 * (1 - b1) * g1 + (1 - b1) * g2) / (1 - b1**2)
    nu = (b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2) / (1 - b2**2)
    return -lr * mu / (np.sqrt(nu) + eps)


def test_options_reach_the_optimizer_by_their_config_names():
    adam = build.build_optimizer(config.Config(adam_b1=0.5, adam_eps=1e-2), steps_per_epoch=10)
    sgd = build.build_optimizer(config.Config(optimizer="sgd", sgd_momentum=0.0), steps_per_epoch=10)
    params = {"w": jnp.ones(3)}
    grads = [{"w": jnp.array([1.0, 0.0, -2.0])}, {"w": jnp.array([3.0, 0.0, -2.0])}]
    updates, _ = sgd.update(grads[0], sgd.init(params), params)
    np.testing.assert_allclose(updates["w"], -1e-3 * grads[0]["w"], rtol=1e-6)  # plain SGD
    state = adam.init(params)
    for g in grads:
        updates, state = adam.update(g, state, params)
    expected = adam_second_step(1.0, 3.0, b1=0.5, b2=0.999, eps=1e-2)
    assert expected != pytest.approx(adam_second_step(1.0, 3.0, b1=0.9, b2=0.999, eps=1e-8), rel=1e-3)
    np.testing.assert_allclose(float(updates["w"][0]), expected, rtol=1e-5)


def test_any_optax_optimizer_trains_by_name_with_options_that_have_no_field(slice_config, tmp_path):
    run = config.Config(optimizer="adamw", options=("adamw.weight_decay=0.5", "adamw.nesterov=true"))
    validation.validate(run)
    built = build.build_optimizer(run, steps_per_epoch=10)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([1.0, 0.0, -2.0])}
    for expected, weight_decay in ((True, 0.5), (False, 1e-4)):
        reference = optax.adamw(1e-3, weight_decay=weight_decay, nesterov=True)
        same = np.allclose(
            built.update(grads, built.init(params), params)[0]["w"],
            reference.update(grads, reference.init(params), params)[0]["w"],
        )
        assert same == expected  # the option arrived, and it changes the step
    runner.train_and_evaluate(tiny(slice_config, epochs=2, optimizer="lion", options=("lion.b1=0.8",)), tmp_path)
    assert trains(tmp_path) and json.loads((tmp_path / "config.json").read_text())["options"] == ["lion.b1=0.8"]


def test_a_registered_objectives_own_option_arrives_by_its_name():
    def scaled(model, params, inputs, targets, key, scale=1.0):
        loss, metrics = losses.elbo_objective(model, params, inputs, targets, key)
        return scale * loss, metrics

    losses.OBJECTIVES["scaled"] = scaled
    try:
        model = models.VAE(widths=(8,), latent_dim=2)
        params = train.init_params(model, (28, 28, 1), jax.random.key(0))
        x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
        values = [
            build.build_objective(config.Config(objective="scaled", options=options))(
                model, params, x, x, jax.random.key(2)
            )[0]
            for options in ((), ("scaled.scale=3",))
        ]
        np.testing.assert_allclose(values[1], 3 * values[0], rtol=1e-6)
    finally:
        del losses.OBJECTIVES["scaled"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"options": ("adam.eps",)}, "`options` entry 'adam.eps' is not NAME.OPTION=VALUE"),
        (
            {"options": ("adamw.weight_decay=0.1",)},
            "names adamw, which is not the run's optimizer (adam), schedule (constant) or objective (elbo): "
            "choose `optimizer` adamw",
        ),
        ({"options": ("nothing.at_all=1",)}, "names nothing, which is not the run's optimizer (adam)"),
        ({"options": ("adam.eps=1e-4",)}, "adam.eps has a field of its own: set `adam_eps`"),
        ({"options": ("adam.nesterov=true",)}, "adam takes no option 'nesterov' (its options: b1, b2, eps)"),
        ({"optimizer": "adam_iwae", "options": ("adam_iwae.batch_size=3",)}, "adam_iwae takes no option 'batch_size'"),
        ({"schedule": "stages", "options": ("stages.steps_per_epoch=3",)}, "stages takes no option 'steps_per_epoch'"),
        ({"optimizer": "adamw", "options": ("adamw.weight_decay=lots",)}, "takes a float like its default 0.0001"),
        ({"optimizer": "adamw", "options": ("adamw.nesterov=yes",)}, "takes a bool like its default False"),
        ({"optimizer": "adamw", "options": ("adamw.b1=0.8", "adamw.b1=0.7")}, "sets adamw.b1 twice"),
        (
            {"objective": "iwae", "options": ("iwae.samples=3",)},
            "iwae.samples has a field of its own: set `objective_samples`",
        ),
        ({"optimizer": "adamx"}, "unknown `optimizer` 'adamx': use one of adam, adam_iwae, sgd, or an optax optimizer"),
        ({"optimizer": "chain"}, "unknown `optimizer` 'chain'"),  # in optax, but no optimizer of a learning rate
    ],
)
def test_an_option_entry_that_cannot_be_read_is_refused_naming_what_would_do(changes, message):
    with pytest.raises(config.ConfigError) as raised:
        validation.validate(config.Config(**changes))
    assert message in str(raised.value) and raised.value.field in changes


def test_the_options_are_part_of_what_a_resumed_run_may_not_change():
    from jaxae.workdir import config_differences

    saved = config.Config(optimizer="adamw", options=("adamw.weight_decay=0.5",))
    assert config_differences(saved, dataclasses.replace(saved, options=())) == [
        "options (('adamw.weight_decay=0.5',) -> ())"
    ]
    assert config_differences(saved, dataclasses.replace(saved, epochs=50, stages_count=4)) == []
    assert config.SAVED_WHEN_RESUMED == ("epochs",) and "epochs" in config.RESUMABLE_FIELDS


def test_a_config_json_of_the_earlier_layout_loads_resumes_and_restores(slice_config, tmp_path):
    old = json.loads((ROOT / "experiments" / "results" / "vae" / "config.json").read_text())
    assert "objective" not in old and "optimizer" not in old  # a committed run from before the registries
    restored = config.Config.from_json(old)
    assert (restored.objective, restored.optimizer, restored.schedule) == (None, "adam", "constant")
    assert validation.objective_name(restored) == "elbo" and restored.adam_eps == 1e-8  # what such a run trained with
    run = tiny(slice_config, epochs=1)
    runner.train_and_evaluate(run, tmp_path)
    new_fields = set(config.Config().to_json()) - set(old)
    earlier = {k: v for k, v in json.loads((tmp_path / "config.json").read_text()).items() if k not in new_fields}
    (tmp_path / "config.json").write_text(json.dumps(earlier))
    runner.train_and_evaluate(dataclasses.replace(run, epochs=2), tmp_path, resume=True)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    assert restore.restore_run(tmp_path).epoch == 2


def test_an_objective_written_outside_jaxae_trains_by_name_with_corruption_and_binarization(
    slice_config, tmp_path, monkeypatch
):
    def watched_elbo(model, params, inputs, targets, key):
        """The ELBO, reporting what it was handed: corrupted inputs and binary targets."""
        loss, metrics = losses.elbo_objective(model, params, inputs, targets, key)
        flat = targets.reshape(len(targets), -1)
        metrics["inputs_moved"] = jnp.mean(jnp.abs(inputs - targets).reshape(len(targets), -1), axis=1)
        metrics["targets_grey"] = jnp.mean(flat * (1 - flat), axis=1)  # 0 for binary pixels
        return loss, metrics

    monkeypatch.setitem(losses.OBJECTIVES, "watched_elbo", watched_elbo)
    run = tiny(slice_config, objective="watched_elbo", inputs="gaussian", noise_level=0.3, binarize="dynamic")
    runner.train_and_evaluate(dataclasses.replace(run, epochs=1), tmp_path)
    summary = runner.train_and_evaluate(run, tmp_path, resume=True)  # and resumes
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2] and summary["epochs"] == 2
    for split in ("train", "test"):
        assert records[-1][f"{split}_inputs_moved"] > 0.05 and records[-1][f"{split}_targets_grey"] == 0
    assert (tmp_path / "figures" / "reconstructions_epoch_02.png").exists() and trains(tmp_path)


def test_fit_scores_the_test_set_with_the_objectives_it_is_given(mnist_small):
    model = models.VAE(widths=(16,), latent_dim=4)
    state = train.create_state(model, optim.adam(1e-3), (28, 28, 1), key=jax.random.key(0))
    _, history = train.fit(
        state,
        model,
        losses.reconstruction_objective,
        *mnist_small,
        key=jax.random.key(1),
        epochs=1,
        batch_size=64,
        evaluate_with={"elbo": losses.elbo_objective},
        eval_batch_size=100,
    )
    record = history[0]
    assert record["test_loss"] == record["test_mse"]  # the training objective: MSE
    assert record["test_elbo_loss"] == pytest.approx(record["test_elbo_reconstruction"] + record["test_elbo_kl"])
    assert record["test_elbo_loss"] > 100  # -ELBO in nats per image, not an MSE


def test_restore_run_reads_parameters_without_optimizer_state_or_data(slice_config, tmp_path, monkeypatch):
    single, seeds = tmp_path / "single", tmp_path / "seeds"
    runner.train_and_evaluate(tiny(slice_config, epochs=1), single)
    runner.train_and_evaluate(tiny(slice_config, epochs=1, seeds=2), seeds)
    expected = {
        "single": restore_latest(single)[0].params,
        "seed_0": restore_latest(seeds / "seed_0")[0].params,
        "seed_1": restore_latest(seeds / "seed_1")[0].params,
    }

    def refuse(*args, **kwargs):
        raise AssertionError("restore_run read optimizer state or data")

    monkeypatch.setattr(checkpoint.Checkpoints, "restore", refuse)  # the whole state, optimizer included
    monkeypatch.setattr(train, "create_state", refuse)
    monkeypatch.setattr(data, "load", refuse)
    one, both = restore.restore_run(single), restore.restore_run(seeds)
    assert one.epoch == both.epoch == 1 and both.seeds == (0, 1) and both.config.seeds == 2
    jax.tree.map(np.testing.assert_array_equal, one.params, expected["single"])
    for i, seed in enumerate(("seed_0", "seed_1")):
        jax.tree.map(lambda a, b, i=i: np.testing.assert_array_equal(a[i], b), both.params, expected[seed])
    monkeypatch.undo()
    assert one.test_set.images.shape == (256, 28, 28, 1)  # the data comes when asked for


def test_restore_run_of_a_study_folder_names_its_runs(slice_config, tmp_path):
    runner.train_and_evaluate(tiny(slice_config, epochs=1), tmp_path / "ae_4")
    with pytest.raises(config.ConfigError, match="holds the runs ae_4, each in its folder"):
        restore.restore_run(tmp_path)


def test_library_errors_name_the_field_and_the_command_line_names_the_flag():
    with pytest.raises(config.ConfigError) as raised:
        validation.validate(config.Config(eval_batch_size=0))
    assert raised.value.field == "eval_batch_size" and "--" not in str(raised.value)
    assert cli.as_flags(str(raised.value)) == "--eval-batch-size must be positive, got 0"
    with pytest.raises(config.ConfigError, match="unknown `objective` 'nope'") as raised:
        validation.validate(config.Config(objective="nope"))
    assert raised.value.field == "objective"


def test_no_library_module_mentions_a_flag():
    pip_arguments = {"--no-deps", "--quiet", "--dest", "--only-binary"}
    for path in (ROOT / "jaxae").glob("*.py"):
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", path.read_text())) - pip_arguments
        assert not flags, (path.name, flags)


@contextlib.contextmanager
def counting_lowerings():
    """Yields a list that gains an item each time a jitted function is traced and lowered."""
    lowered = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield lowered
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_measurements_compile_once_however_often_they_are_called(mnist_small):
    model = models.VAE(widths=(16,), latent_dim=4)
    x = np.asarray(train.to_float(mnist_small[1][:200]))
    inits = [model.init(jax.random.key(k), x[:1], key=jax.random.key(9)) for k in range(3)]  # other values each call
    calls = {
        "reconstruct": lambda params: evaluate.reconstruct(model, params, x),
        "encode": lambda params: evaluate.encode(model, params, x),
        "decode": lambda params: evaluate.decode(model, params, x[:, 0, :4, 0]),
        "dataset_nll": lambda params: evaluate.dataset_nll(model, params, x, jax.random.key(0), samples=4),
        "objective_values": lambda params: evaluate.objective_values(
            model, losses.elbo_objective, params, x, jax.random.key(0)
        ),
    }
    for name, call in calls.items():
        with counting_lowerings() as first:
            call(inits[0])
        with counting_lowerings() as later:
            for params in inits[1:]:
                call(params)
        assert first and not later, name
    labels = np.random.default_rng(0).integers(0, 3, 200)

    def fit_probe(seed):  # other features each time: arguments, not constants of the program
        features = np.random.default_rng(seed).normal(size=(200, 5)).astype(np.float32)
        return probe.fit_classifier(features, labels, key=jax.random.key(seed), epochs=1, min_steps=1)

    with counting_lowerings() as first:
        fit_probe(0).predict_proba(np.zeros((7, 5), np.float32))
    with counting_lowerings() as later:
        for seed in (1, 2):
            fit_probe(seed).predict_proba(np.zeros((7, 5), np.float32))
    assert first and not later


def test_two_stochastic_layers_train_by_config_and_restore(slice_config, tmp_path):
    run = tiny(slice_config, model="hvae", epochs=2, latent_dim=4, upper_widths=(8,), upper_latent_dim=3)
    run = dataclasses.replace(run, objective="iwae", objective_samples=3, objective_estimator="dreg")
    runner.train_and_evaluate(run, tmp_path)
    assert trains(tmp_path)
    restored = restore.restore_run(tmp_path)
    assert restored.model.depth == 2 and "q_mean_0" in restored.params["params"]
    with pytest.raises(config.ConfigError, match="k-sample objective") as raised:
        validation.validate(dataclasses.replace(run, objective="elbo"))
    assert raised.value.field == "objective"
    assert validation.objective_name(dataclasses.replace(run, objective=None)) == "vae_k"


def theano_adam_steps(params: np.ndarray, summed_grad, steps: int, lr: float) -> np.ndarray:
    """Burda et al.'s ``optimizers.Adam`` transcribed line by line, with Theano's update
    semantics: every expression reads the shared variables as they were before the step.
    ``summed_grad(params)`` is the gradient of the loss summed over the batch."""
    b1, b2 = 0.99, 0.999
    m, v, t = np.zeros_like(params), np.ones_like(params), 1.0
    for _ in range(steps):
        g = summed_grad(params)
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        new_params = params - alpha * m / (np.sqrt(v) + 1e-4)  # the code adds to the bound: minus for a loss
        m, v, t = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * np.square(g), t + 1
        params = new_params
    return params


def test_adam_iwae_steps_as_the_authors_code_does_on_the_loss_summed_over_the_batch():
    batch = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)

    def mean_loss(w):  # per image: 0.5 |w * x - 1|^2, averaged over the batch as jaxae's losses are
        return jnp.mean(0.5 * jnp.sum(jnp.square(w * batch - 1.0), axis=1))

    tx = build.build_optimizer(config.Config(optimizer="adam_iwae", batch_size=20), steps_per_epoch=10)
    params = jnp.array([0.3, -0.2, 0.5])
    state = tx.init(params)
    first = None
    for _ in range(6):
        updates, state = tx.update(jax.grad(mean_loss)(params), state, params)
        first = updates if first is None else first
        params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(np.asarray(first), 0.0)  # the first gradient moves the parameters one step late

    def summed_grad(w):
        return np.asarray(jax.grad(lambda w: 20 * mean_loss(w))(jnp.asarray(w, jnp.float32)), np.float64)

    expected = theano_adam_steps(np.array([0.3, -0.2, 0.5]), summed_grad, steps=6, lr=1e-3)
    np.testing.assert_allclose(np.asarray(params), expected, rtol=1e-5)
    textbook = theano_adam_steps(np.array([0.3, -0.2, 0.5]), lambda w: summed_grad(w) / 20, steps=6, lr=1e-3)
    assert not np.allclose(textbook, expected, rtol=1e-3)  # the batch sum is part of the rule (v starts at 1)


def test_the_library_says_what_it_does_unless_asked_to_be_quiet(slice_config, tmp_path, capsys):
    runner.train_and_evaluate(slice_config, tmp_path / "spoken")
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("mnist_slice") or "images" in line for line in lines)  # where the data came from
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"] and all(" test " in line for line in epochs)
    records = []
    runner.train_and_evaluate(slice_config, tmp_path / "quiet", quiet=True, on_epoch=records.append)
    assert capsys.readouterr().out == "" and [r["epoch"] for r in records] == [1, 2]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"objective_samples": 50},
            "`objective_samples` is set, but the run's objectives (elbo) take no samples option",
        ),
        ({"objective_estimator": "dreg"}, "the run's objectives (elbo) take no estimator option"),
        (
            {"optimizer": "sgd", "adam_b1": 0.5},
            "`adam_b1` is an option of the adam optimizer, but the run's `optimizer`",
        ),
        ({"optimizer": "adam_iwae", "adam_eps": 1e-3}, "`adam_eps` is an option of the adam optimizer"),
        (
            {"stages_count": 3},
            "`stages_count` is an option of the stages schedule, but the run's `schedule` is constant",
        ),
    ],
)
def test_an_option_that_nothing_in_the_run_reads_is_refused_naming_its_owner(changes, message):
    with pytest.raises(config.ConfigError) as raised:
        validation.validate(config.Config(**changes))
    assert message in str(raised.value) and raised.value.field in changes
    taken = {"objective": "iwae", "objective_samples": 50, "eval_objectives": ("iwae",), "optimizer": "sgd"}
    validation.validate(config.Config(model="vae", **taken, sgd_momentum=0.5))  # each option read by its owner
    validation.validate(config.Config(eval_objectives=("iwae",), objective_samples=50))  # read by an evaluation


def test_small_promises_flags_in_full_no_null_figures_no_empty_title_band(slice_config, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from experiments import harness
    from jaxae import plots

    with pytest.raises(SystemExit) as refused:  # argparse would take --epoch for --epochs
        harness.main(slice_config, "a run", ["--workdir", str(tmp_path / "a"), "--epoch", "3"])
    assert refused.value.code == 2 and "unrecognized arguments: --epoch 3" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()

    def reconstruction_nats(model, params, x, targets, key):  # reports no mse
        return losses.bernoulli_nll(model.apply(params, x, key=key).logits, targets), {}

    monkeypatch.setitem(losses.OBJECTIVES, "nats", reconstruction_nats)
    summary = runner.train_and_evaluate(tiny(slice_config, epochs=1, objective="nats"), tmp_path / "b", quiet=True)
    assert "test_mse" not in summary and "test_mse" not in json.loads((tmp_path / "b" / "summary.json").read_text())

    images = np.zeros((16, 28, 28, 1), np.float32)
    for title, rows_ in (("", 2), ("a title", 2)):
        path = plots.image_grid(images, tmp_path / f"grid{len(title)}.png", title=title)
        assert Image.open(path).size == plots.grid_size(rows_, 8, labelled=False, titled=bool(title))
    assert plots.grid_size(2, 8, labelled=False, titled=False)[1] == round(2 * plots.CELL_INCHES * plots.DPI)
    untitled = np.asarray(Image.open(tmp_path / "grid0.png").convert("L"))
    assert untitled[:3].max() == untitled.max() == 0  # black cells reach the top row: no blank band


def read_events(folder: Path) -> list:
    """Every event of the TensorBoard files in ``folder``: TFRecords of length, CRC, Event, CRC."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            length = int.from_bytes(data[at : at + 8], "little")
            events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
            at += 12 + length + 4
    return events


def test_tensorboard_events_hold_each_epochs_metrics_and_its_reconstruction_grids(slice_config, tmp_path):
    run = dataclasses.replace(slice_config, epochs=2, plot_epochs=(1,), tensorboard=True)
    runner.train_and_evaluate(run, tmp_path, quiet=True)
    runner.train_and_evaluate(dataclasses.replace(run, epochs=3), tmp_path, resume=True, quiet=True)
    scalars, images = {}, {}
    for event in read_events(tmp_path / "tensorboard"):
        for value in event.summary.value:
            if value.HasField("image"):
                images[event.step] = value.image.encoded_image_string
            else:
                scalars[(value.tag, event.step)] = value.simple_value
    for record in read_metrics(tmp_path):
        assert scalars[("test_loss", record["epoch"])] == pytest.approx(record["test_loss"], rel=1e-6)
        assert scalars[("train_loss", record["epoch"])] == pytest.approx(record["train_loss"], rel=1e-6)
    assert sorted(images) == [1, 2, 3] and all(png.startswith(b"\x89PNG") for png in images.values())


def test_a_call_that_opens_its_event_file_in_the_same_second_as_the_last_keeps_the_last_ones_events(
    tmp_path, monkeypatch
):
    from tensorboardX import event_file_writer

    from jaxae.tensorboard import EventWriter

    monkeypatch.setattr(event_file_writer.time, "time", lambda: 1_700_000_000.0)  # one second for both
    for epoch in (1, 2):
        events = EventWriter(tmp_path, first_epoch=epoch)
        events.epoch({"epoch": epoch, "train_loss": float(epoch)})
        events.close()
    scalars = {(v.tag, e.step): v.simple_value for e in read_events(tmp_path / "tensorboard") for v in e.summary.value}
    assert scalars == {("train_loss", 1): 1.0, ("train_loss", 2): 2.0}


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        (
            lambda model, params, x, t, key: (losses.OBJECTIVES["elbo"](model, params, x, t, key)[0][:, None], {}),
            "returns loss (2, 1) for a batch of 2 images: the loss and every metric must have one value per image",
        ),
        (
            lambda model, params, x, t, key: (
                losses.OBJECTIVES["elbo"](model, params, x, t, key)[0],
                {"loss": x.sum()},
            ),
            "returns loss () for a batch of 2 images",
        ),
        (
            lambda model, params, x, t, key: (
                losses.OBJECTIVES["elbo"](model, params, x, t, key)[:1] + ({"loss": x.sum((1, 2, 3))},)
            ),
            "reports a metric named loss, which would replace its loss in the records: rename it",
        ),
    ],
)
def test_an_objective_that_breaks_the_contract_is_refused_before_anything_is_written(
    objective, message, slice_config, tmp_path, monkeypatch
):
    monkeypatch.setitem(losses.OBJECTIVES, "broken", objective)
    with pytest.raises(config.ConfigError) as raised:
        runner.train_and_evaluate(tiny(slice_config, objective="broken"), tmp_path / "run", quiet=True)
    assert message in str(raised.value) and str(raised.value).startswith("objective broken ")
    assert not (tmp_path / "run").exists()


def test_a_model_the_objective_cannot_score_and_a_negative_learning_rate_are_refused(
    slice_config, tmp_path, monkeypatch
):
    with pytest.raises(config.ConfigError, match="objective elbo cannot score model ae"):
        runner.train_and_evaluate(tiny(slice_config, model="ae", objective="elbo"), tmp_path / "a", quiet=True)
    monkeypatch.setitem(optim.SCHEDULES, "uphill", lambda rate, *, steps_per_epoch: lambda step: -rate)
    with pytest.raises(config.ConfigError, match=r"schedule uphill gives the learning rate -0.001 at step 0"):
        runner.train_and_evaluate(tiny(slice_config, schedule="uphill"), tmp_path / "b", quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
