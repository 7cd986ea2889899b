"""Tests of `keras_siglip2.training.run.train` (the `siglip2 train` command): a few steps
on a tiny local preset (fixed-resolution and NaFlex) and a tiny CSV dataset written in
the test, the saved preset, the summary, resumption, and the argument errors raised
before any work."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.tasks.conftest import make_tiny_preset, tiny_spm_proto

CAPTIONS = ["a photo of a cat", "a photo of a dog", "a photo of a bird",
            "a red square", "a blue circle", "une photo de chat"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(preset dir, csv path) : a tiny fixed-resolution preset and 12 image-caption rows."""
    return make_setup(tmp_path_factory.mktemp("train_run"))


def make_setup(root):
    """Writes the tiny preset and the CSV of `_examples()` under `root`."""
    from keras_siglip2.training.data.sources import write_csv

    preset = make_tiny_preset(root / "preset", tiny_spm_proto())
    csv_path = write_csv(str(root / "data" / "captions.csv"), _examples())
    return preset, csv_path


def _examples():
    """The 12 (image, caption) rows of the CSV: random 20 x 24 images, 6 captions."""
    rng = np.random.RandomState(0)
    return [
        (rng.randint(0, 256, (20, 24, 3)).astype(np.uint8), CAPTIONS[i % len(CAPTIONS)])
        for i in range(12)
    ]


# A run learns: its model's sigmoid loss on the training data (all 12 rows as one fixed
# batch) ends below LEARNED x that of the preset it started from. Measured (JAX, CPU):
# 0.68 after 3 steps (fixed resolution), 0.71 after 2 (NaFlex), 0.58 after 3 (NaFlex
# with LocCa, two sequence lengths), 0.68 after 5 (the full recipe); a learning rate of
# 1e-6 instead of 1e-3 gives 0.998 (fixed) and 0.999 (NaFlex).
LEARNED = 0.8


def _sigmoid_loss(logits):
    """The sigmoid loss (sum over the texts, mean over the images; labels +1 on the
    diagonal), by hand in float64."""
    logits = np.asarray(logits, np.float64)
    labels = 2 * np.eye(len(logits)) - 1
    return float(np.mean(np.sum(np.logaddexp(0, -labels * logits), axis=1)))


def _check_learned(initial, trained, trained_preset):
    """The sigmoid loss on the 12 rows (through the trained preset's preprocessor) of
    `trained` is below LEARNED x that of `initial`. `initial` is given `trained`'s
    weights on the way (one compiled predict step serves both)."""
    from keras_siglip2.preprocessing import SigLIP2Preprocessor

    examples = _examples()
    preprocessor = SigLIP2Preprocessor.from_preset(trained_preset)
    x = preprocessor({"images": np.stack([image for image, _ in examples]),
                      "prompts": [caption for _, caption in examples]})
    start = _sigmoid_loss(initial.predict_on_batch(x)["vision_logits"])
    initial.set_weights(trained.get_weights())
    end = _sigmoid_loss(initial.predict_on_batch(x)["vision_logits"])
    assert end < LEARNED * start, (start, end, end / start)


@pytest.fixture(scope="module")
def naflex_preset(setup, tmp_path_factory):
    """A tiny NaFlex preset (patch 8, 16 patches, 4 x 4 position grid) with the same
    tokenizer as `setup`'s."""
    root = tmp_path_factory.mktemp("train_run_naflex")
    return make_tiny_preset(root / "preset", tiny_spm_proto(), naflex=True)


def _weights(backbone):
    return {w.path: np.asarray(w.numpy()) for w in backbone.weights}


def _train(setup, out, **kwargs):
    from keras_siglip2.training.run import train

    preset, csv_path = setup
    options = dict(steps=3, batch_size=4, decoder=False, self_distillation=False,
                   masked_prediction=False, learning_rate=1e-3, seed=0, verbose=False)
    options.update(kwargs)
    return train(preset, csv_path, out_dir=str(out), **options)


def test_train_saves_a_trained_preset(setup, tmp_path, capsys):
    from keras_siglip2.models import SigLIP2Backbone
    from keras_siglip2.preprocessing import SigLIP2Preprocessor

    summary = _train(setup, tmp_path / "run", verbose=True)
    printed = capsys.readouterr().out  # stdout is not a terminal: one line per step
    assert "\r" not in printed
    assert [line.split("  ")[0] for line in printed.splitlines()
            if line.startswith("step ")] == ["step 1/3", "step 2/3", "step 3/3"], printed
    assert summary["steps"] == 3
    assert summary["losses"] == ["sigmoid"]
    assert np.isfinite(summary["final_losses"]["sigmoid"])
    on_disk = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert on_disk["steps"] == 3 and on_disk["preset_path"] == summary["preset_path"]
    assert not (tmp_path / "run" / "backup").exists()  # a finished run drops its backup

    initial = SigLIP2Backbone.from_preset(setup[0])
    before = _weights(initial)
    trained = SigLIP2Backbone.from_preset(summary["preset_path"])
    after = _weights(trained)
    _check_learned(initial, trained, summary["preset_path"])
    assert before.keys() == after.keys()
    assert all(np.all(np.isfinite(v)) for v in after.values())
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert any("vision_encoder" in k for k in changed), changed
    assert any("text_encoder" in k for k in changed), changed
    # The preset is complete: its preprocessor (tokenizer + image converter) loads.
    preprocessor = SigLIP2Preprocessor.from_preset(summary["preset_path"])
    assert tuple(preprocessor.image_converter.image_size) == tuple(
        trained.vision_encoder.image_size
    )


def _train_naflex(setup, preset, out, decoder, lengths, steps):
    """Trains the NaFlex preset on the CSV's images; checks the summary, that the
    saved NaFlex tower changed and that the model learned; returns the summary."""
    from keras_siglip2.models import SigLIP2Backbone
    from keras_siglip2.models.naflex_vision_encoder import SigLIP2NaFlexVisionEncoder
    from keras_siglip2.training.run import train

    summary = train(preset, setup[1], out_dir=str(out), steps=steps, batch_size=4,
                    decoder=decoder, naflex_sequence_lengths=lengths, learning_rate=1e-3,
                    seed=0, verbose=False)
    assert summary["steps"] == steps
    assert summary["losses"] == ["sigmoid", "locca"] if decoder else ["sigmoid"]
    assert summary["naflex_sequence_lengths"] == lengths
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    trained = SigLIP2Backbone.from_preset(summary["preset_path"])
    assert isinstance(trained.vision_encoder, SigLIP2NaFlexVisionEncoder)
    initial = SigLIP2Backbone.from_preset(preset)
    before = _weights(initial)
    after = _weights(trained)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert any("vision_encoder" in k for k in changed), changed
    _check_learned(initial, trained, summary["preset_path"])
    return summary


def test_train_naflex_preset(setup, naflex_preset, tmp_path):
    """A NaFlex preset trains on NaFlex views of the CSV's images (SILC / TIPS default
    to off for it, as in the paper, and are refused when asked for)."""
    from keras_siglip2.training.run import train

    _train_naflex(setup, naflex_preset, tmp_path / "naflex", decoder=False, lengths=[16],
                  steps=2)
    csv_path = setup[1]
    with pytest.raises(ValueError, match="NaFlex training uses the sigmoid and LocCa"):
        train(naflex_preset, csv_path, out_dir=str(tmp_path / "refused"), steps=2,
              batch_size=4, self_distillation=True, verbose=False)
    with pytest.raises(ValueError, match="naflex_sequence_lengths"):
        train(naflex_preset, csv_path, out_dir=str(tmp_path / "refused"), steps=2,
              batch_size=4, naflex_sequence_lengths=[0], verbose=False)
    with pytest.raises(ValueError, match="applies to NaFlex presets"):
        train(setup[0], csv_path, out_dir=str(tmp_path / "refused"), steps=2,
              batch_size=4, naflex_sequence_lengths=[16], verbose=False)
    assert not (tmp_path / "refused" / "preset").exists()


@pytest.mark.large
def test_train_naflex_preset_with_locca_and_two_lengths(setup, naflex_preset, tmp_path):
    """Sigmoid + LocCa on a NaFlex preset, the sequence length drawn per batch."""
    _train_naflex(setup, naflex_preset, tmp_path / "naflex", decoder=True, lengths=[8, 16],
                  steps=3)


@pytest.mark.large
def test_cli_train_naflex_preset_subprocess(setup, naflex_preset, tmp_path):
    """`siglip2 train --preset <NaFlex dir> --data CSV` with every default but the
    length of the run: sigmoid + LocCa, the paper's NaFlex sequence lengths."""
    out = tmp_path / "cli_naflex"
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"))
    result = subprocess.run(
        [sys.executable, "-m", "keras_siglip2.cli", "train", "--preset", naflex_preset,
         "--data", setup[1], "--steps", "2", "--batch-size", "4", "--out", str(out),
         "--json"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["losses"] == ["sigmoid", "locca"]
    assert summary["naflex_sequence_lengths"] == [128, 256, 576, 784, 1024]
    assert all(np.isfinite(v) for v in summary["final_losses"].values())


@pytest.mark.large
def test_resumed_run_matches_an_uninterrupted_one(setup, tmp_path):
    """Interrupted after step 3 (backup at step 2), the same call resumes at step 2
    with the data at batch 2 and ends with the weights of an uninterrupted run."""
    import keras

    from keras_siglip2.models import SigLIP2Backbone

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == 3:
                raise KeyboardInterrupt("simulated interruption")

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _train(setup, out, steps=4, checkpoint_every=2, callbacks=[Crash()])
    assert (out / "backup" / "2" / "commit_success.txt").is_file()  # orbax, complete
    resumed = _train(setup, out, steps=4, checkpoint_every=2)
    assert resumed["start_step"] == 2 and resumed["steps"] == 4
    straight = _train(setup, tmp_path / "straight", steps=4, checkpoint_every=2)
    a = _weights(SigLIP2Backbone.from_preset(resumed["preset_path"]))
    b = _weights(SigLIP2Backbone.from_preset(straight["preset_path"]))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(data="missing.csv"), FileNotFoundError, "does not exist"),
        (dict(data="nothing-*.tfrecord"), FileNotFoundError, "matches no file"),
        (dict(preset="siglip2_bsae_patch16_224"), ValueError, "Unknown preset"),
        (dict(steps=0), ValueError, "steps"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(mesh="batch=4,modle=2"), ValueError, "unknown axis name"),
        (dict(mesh="batch=two"), ValueError, "positive integer"),
        (dict(mesh="batch=4", batch_size=6), ValueError, "divisible"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate"),
        (dict(curation_ratio=0.5), ValueError, "needs `curate_with`"),
        (dict(curate_with="siglip2_bsae_patch16_224"), ValueError, "Unknown preset"),
        (dict(curate_with="PRESET", curation_ratio=0.0), ValueError, "curation_ratio"),
        (dict(curate_with="PRESET", curation_ratio=1.5), ValueError, "curation_ratio"),
        (dict(naflex_from=1.0), ValueError, r"naflex_from.*\(0, 1\)"),
        (dict(naflex_from=0), ValueError, "naflex_from"),
        (dict(naflex_lengths=[128]), ValueError, "needs `naflex_from`"),
        (dict(naflex_from=0.9, naflex_lengths=[128, 0]), ValueError, "naflex_lengths"),
        (dict(balance_attributes=["woman"]), ValueError, "balance_proxies"),
        (dict(balance_proxies=["doctor"]), ValueError, "balance_attributes"),
        (dict(balance_attributes=[], balance_proxies=["doctor"]), ValueError,
         "balance_attributes"),
    ],
)
def test_bad_arguments_fail_before_work(setup, tmp_path, kwargs, error, words):
    from keras_siglip2.training import run

    preset, csv_path = setup
    args = dict(preset=preset, data=csv_path, steps=2, batch_size=4, out_dir=str(tmp_path))
    args.update(kwargs)
    if args.get("curate_with") == "PRESET":
        args["curate_with"] = preset
    if "data" in kwargs:
        args["data"] = str(tmp_path / kwargs["data"])
    with pytest.raises(error, match=words):
        run.train(**args, verbose=False)
    assert not (tmp_path / "preset").exists()


def test_cli_train_parser_and_error():
    from keras_siglip2 import cli

    args = cli.build_parser().parse_args(
        ["train", "--preset", "p", "--data", "d.csv", "--steps", "5", "--batch-size", "8",
         "--no-decoder", "--mesh", "batch=2"]
    )
    assert (args.steps, args.batch_size, args.decoder, args.mesh) == (5, 8, False, "batch=2")
    # SILC / TIPS: None unless given (train() then follows the paper per tower type).
    assert (args.self_distillation, args.masked_prediction) == (None, None)
    args = cli.build_parser().parse_args(
        ["train", "--preset", "p", "--data", "d.csv", "--no-self-distillation",
         "--masked-prediction"])
    assert (args.self_distillation, args.masked_prediction) == (False, True)
    assert cli.main(["train", "--preset", "p", "--data", "/no/such/file.csv"]) == 1


@pytest.mark.large
def test_cli_train_subprocess(setup, tmp_path):
    preset, csv_path = setup
    out = tmp_path / "cli"
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"))
    result = subprocess.run(
        [sys.executable, "-m", "keras_siglip2.cli", "train", "--preset", preset, "--data",
         csv_path, "--steps", "2", "--batch-size", "4", "--out", str(out), "--no-decoder",
         "--no-self-distillation", "--no-masked-prediction", "--json"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert printed["steps"] == 2
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and os.path.isdir(summary["preset_path"])
    assert np.isfinite(summary["final_losses"]["sigmoid"])


@pytest.mark.large
def test_full_recipe_runs(setup, tmp_path):
    """LocCa + SILC + TIPS (switched on at 80 % of 5 steps: at step 4) on the CSV; the
    saved model learned (`LEARNED`)."""
    from keras_siglip2.models import SigLIP2Backbone

    summary = _train(setup, tmp_path / "full", steps=5, batch_size=4, decoder=True,
                     self_distillation=True, masked_prediction=True)
    assert summary["losses"] == ["sigmoid", "locca", "silc", "tips"]
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    assert summary["final_losses"]["silc"] > 0 and summary["final_losses"]["tips"] > 0
    _check_learned(SigLIP2Backbone.from_preset(setup[0]),
                   SigLIP2Backbone.from_preset(summary["preset_path"]), summary["preset_path"])


# ----------------------------------------------------------------- TrainConfig
def test_train_config_round_trips_and_excludes_keyword_arguments(tmp_path):
    from keras_siglip2.training.recipes import TrainConfig
    from keras_siglip2.training.run import train

    config = TrainConfig(preset="p", data=["a.csv", "b.csv"], steps=7, batch_size=8,
                         mesh="batch=2", decoder=False, learning_rate=1e-4, seed=3,
                         naflex_sequence_lengths=(128, 256), curate_with="ref",
                         curation_ratio=0.25, naflex_from=0.9, naflex_lengths=[256],
                         balance_attributes=("woman", "man"), balance_proxies=["doctor"])
    as_dict = config.get_config()
    assert json.loads(json.dumps(as_dict)) == as_dict  # plain JSON values
    assert as_dict["steps"] == 7 and as_dict["data"] == ["a.csv", "b.csv"]
    assert as_dict["naflex_sequence_lengths"] == [128, 256]
    assert as_dict["balance_attributes"] == ["woman", "man"]
    assert config.to_dict() == as_dict
    again = TrainConfig.from_config(as_dict)
    assert again.get_config() == as_dict
    path = config.save(tmp_path)
    assert os.path.basename(path) == "train_config.json"
    assert TrainConfig.load(tmp_path).get_config() == as_dict
    assert TrainConfig().keep_ratio is None and config.keep_ratio == 0.25
    assert TrainConfig(curate_with="ref").keep_ratio == 0.5
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['stpes'\]"):
        TrainConfig.from_config({"stpes": 3})
    with pytest.raises(ValueError, match=r"not both; got config= and \['steps'\]"):
        train(config=config, steps=5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainConfig.load(tmp_path / "nothing.json")


def test_train_with_curation_reports_acid_statistics(setup, tmp_path):
    """`curate_with` (the starting preset as ACID's reference) and `curation_ratio`:
    each step keeps 4 of a super-batch of 8 (the kept fraction logged by the step is
    4 / 8); the learnability statistics are finite; the saved config reloads."""
    from keras_siglip2.training.recipes import TrainConfig

    summary = _train(setup, tmp_path / "acid", steps=2, curate_with=setup[0],
                     curation_ratio=0.5)
    curation = summary["curation"]
    assert curation["reference"] == setup[0] and curation["keep_ratio"] == 0.5
    assert curation["super_batch_size"] == 8
    assert curation["kept_fraction"] == pytest.approx(4 / 8)
    learnability = curation["learnability"]
    assert np.isfinite(learnability["final"]) and np.isfinite(learnability["mean"])
    # Per-example sigmoid losses over 8 texts lie in [0, 8 * 20]: their differences too.
    assert abs(learnability["final"]) < 160
    assert summary["losses"] == ["sigmoid"] and summary["steps"] == 2
    loaded = TrainConfig.load(tmp_path / "acid")
    assert loaded.curate_with == setup[0] and loaded.curation_ratio == 0.5
    assert loaded.get_config() == summary["config"]
    on_disk = json.loads((tmp_path / "acid" / "train_summary.json").read_text())
    assert on_disk["curation"]["kept_fraction"] == pytest.approx(0.5)


def test_naflex_stage_of_a_naflex_preset_is_an_error(setup, naflex_preset, tmp_path):
    from keras_siglip2.training.run import train

    with pytest.raises(ValueError, match="already has a NaFlex image tower"):
        train(naflex_preset, setup[1], steps=2, batch_size=4, out_dir=str(tmp_path),
              naflex_from=0.9, verbose=False)
    assert not (tmp_path / "preset").exists()


def test_cli_train_curation_and_naflex_flags():
    from keras_siglip2 import cli

    args = cli.build_parser().parse_args(
        ["train", "--preset", "p", "--data", "d.csv", "--curate-with", "ref",
         "--curation-ratio", "0.25", "--naflex-from", "0.9", "--naflex-lengths",
         "128,256"])
    kwargs = cli.train_kwargs(args)
    assert (kwargs["balance_attributes"], kwargs["balance_proxies"]) == (None, None)
    assert (kwargs["curate_with"], kwargs["curation_ratio"]) == ("ref", 0.25)
    assert (kwargs["naflex_from"], kwargs["naflex_lengths"]) == (0.9, [128, 256])
    args = cli.build_parser().parse_args(["train", "--preset", "p", "--data", "d.csv"])
    assert [cli.train_kwargs(args)[k] for k in (
        "curate_with", "curation_ratio", "naflex_from", "naflex_lengths")] == [None] * 4
    args = cli.build_parser().parse_args(
        ["train", "--preset", "p", "--data", "d.csv", "--balance-attributes", "woman,man",
         "--balance-proxies", "doctor"])
    kwargs = cli.train_kwargs(args)
    assert kwargs["balance_attributes"] == ["woman", "man"]
    assert kwargs["balance_proxies"] == ["doctor"]
    for bad in (["--naflex-lengths", "128,x"], ["--balance-proxies", "a,,b"]):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["train", "--preset", "p", "--data", "d.csv",
                                           *bad])


class _Info:
    def __init__(self, tasks):
        self.tasks = tasks

    def locca_tasks(self):
        return self.tasks


class _Data:
    def __init__(self, tasks):
        self.info = _Info(tasks)


@pytest.mark.parametrize("tasks, warned", [
    (("captioning",), 1),
    (("captioning", "aref", "gcap"), 0),
    (("captioning", "gcap"), 0),
])
def test_locca_warning_once_without_region_boxes(tasks, warned):
    import warnings

    from keras_siglip2.training.recipes.stages import (
        LoccaTasksCheck,
        LoccaTasksWarning,
        _locca_tasks,
    )

    check = LoccaTasksCheck(_Data(tasks))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):
            check.on_epoch_end(epoch)
    found = [w for w in caught if issubclass(w.category, LoccaTasksWarning)]
    assert len(found) == warned
    if warned:
        assert "no region boxes" in str(found[0].message)
        assert "boxes" in str(found[0].message) and "box_texts" in str(found[0].message)
    assert _locca_tasks(_Data(tasks)) == list(tasks)
    assert _locca_tasks(object()) is None  # a pipeline that does not say


def test_cli_prints_a_warning_as_one_line(capsys):
    import warnings

    from keras_siglip2.cli.common import warning_lines
    from keras_siglip2.training.recipes.stages import LoccaTasksWarning

    with warning_lines():
        warnings.warn("LocCa trains captioning only: no boxes.", LoccaTasksWarning)
    err = capsys.readouterr().err
    assert err == "siglip2: warning: LocCa trains captioning only: no boxes.\n"


def test_balancing_statistics_reach_the_summary_as_plain_values():
    from keras_siglip2.training.recipes.config import TrainConfig
    from keras_siglip2.training.recipes.stages import balancing_options, balancing_statistics

    class Info:
        def balancing_statistics(self):
            return {"target": np.array([0.5, 0.5]), "achieved": {"kept": np.float32(0.75)}}

    class Data:
        info = Info()

    assert balancing_statistics(Data()) == {"target": [0.5, 0.5], "achieved": {"kept": 0.75}}
    assert json.dumps(balancing_statistics(Data()))
    assert balancing_statistics(object()) is None
    assert balancing_options(TrainConfig()) == {}
