"""The `siglip2` command run as a user runs it (a subprocess per command) on a tiny
local preset built here with a SentencePiece model trained here: every subcommand's
`--help`, `presets`, `embed`, `classify`, `retrieve` (numbers checked against the
embeddings computed in this process), `convert` from big_vision, transformers and
keras-hub, `export`, `train` on a tiny CSV, `demo`, and the bad-input errors (one line,
non-zero exit).

Each subprocess pays ~10 s of imports, so the default run keeps one call per feature
(presets, embed, classify, retrieve, convert from big_vision, a failed convert, train
with the sigmoid loss alone) and checks `--help` and the bad-input errors through
`cli.main` in this process; the same through subprocesses, `.npy` output, the
transformers / keras-hub conversions (which import torch / build a keras-hub model),
`export`, `train` with the whole recipe and `demo` (minutes of compilation and a
TensorFlow export) are marked large."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_siglip2 import cli
from tests.conftest import fixture_path
from tests.tasks.conftest import (
    hand_image_embeddings,
    hand_text_embeddings,
    logit_params,
    make_tiny_preset,
    read_rgb,
    tiny_spm_proto,
    write_images,
)

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
ENTRY_POINT = Path(sys.executable).parent / "siglip2"


def run_cli(*args, cwd=None, timeout=300):
    """Runs `siglip2 ARGS` (the installed entry point, else `python -m
    keras_siglip2.cli`) and returns the CompletedProcess."""
    command = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "keras_siglip2.cli"]
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        command + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
        cwd=str(cwd or ROOT), env=env,
    )


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def siglip2_lines(stderr):
    """Our own stderr lines (TensorFlow / absl start-up chatter left out)."""
    return [line for line in stderr.splitlines() if line.startswith("siglip2:")]


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: tiny preset, its SentencePiece file, images (one unreadable)."""
    root = tmp_path_factory.mktemp("cli")
    proto = tiny_spm_proto()
    (root / "tokenizer.model").write_bytes(proto)
    preset = make_tiny_preset(root / "preset", proto)
    images = write_images(root / "images", [(16, 16), (24, 16), (20, 30), (32, 32)])
    (root / "images" / "img02_broken.png").write_bytes(b"\x89PNG not really")
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images")
    (root / "not_a_preset").mkdir()
    (root / "not_a_preset" / "weights.bin").write_bytes(b"0")
    # Training data as a user writes it: image paths relative to the CSV.
    captions = ["a photo of a cat", "a red square", "a blue circle", "une photo de chien"]
    rows = [f"images/{Path(images[i % len(images)]).name},{captions[i % len(captions)]}"
            for i in range(8)]
    (root / "captions.csv").write_text("image_path,caption\n" + "\n".join(rows) + "\n")
    return {"root": root, "preset": preset, "images": images, "spm": root / "tokenizer.model",
            "csv": root / "captions.csv"}


@pytest.fixture(scope="module")
def model(ws):
    from keras_siglip2.models import SigLIP2Backbone
    from keras_siglip2.preprocessing import SigLIP2Preprocessor

    return (SigLIP2Backbone.from_preset(ws["preset"]),
            SigLIP2Preprocessor.from_preset(ws["preset"]))


def subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)


# --------------------------------------------------------------------------- help


@pytest.mark.large
def test_help_lists_every_subcommand():
    names = subcommands()
    assert {"presets", "embed", "classify", "retrieve", "convert"} <= set(names)
    proc = ok(run_cli("--help"))
    for name in names:
        assert name in proc.stdout


@pytest.mark.parametrize("name", subcommands())
def test_subcommand_help_in_process(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"siglip2 {name}" in capsys.readouterr().out


@pytest.mark.large
@pytest.mark.parametrize("name", subcommands())
def test_subcommand_help(name):
    proc = ok(run_cli(name, "--help"))
    assert proc.stdout.startswith("usage: siglip2 " + name)


# --------------------------------------------------------------------------- presets


def test_presets_json():
    from keras_siglip2 import list_presets

    proc = ok(run_cli("presets", "--json"))
    listed = json.loads(proc.stdout)
    assert list(listed) == list(list_presets())
    assert listed["siglip2_base_patch16_224"]["architecture"]["vision"]["image_size"] == 224


# --------------------------------------------------------------------------- classify


def test_classify(ws, model):
    backbone, preprocessor = model
    root = ws["root"]
    templates = ["a photo of a {}.", "{}"]
    labels = ["cat", "dog", "a red square"]
    proc = ok(run_cli(
        "classify", root / "images", "--labels", " cat, dog,a red square", "--templates",
        *templates, "--preset", ws["preset"], "--top-k", "2", "--json",
        "--plot", root / "classify.png", "--batch-size", "2",
    ))
    out = json.loads(proc.stdout)
    # The unreadable file is skipped, said so in one line, and the rest classified.
    warnings_ = [line for line in siglip2_lines(proc.stderr) if "warning" in line]
    assert len(warnings_) == 1 and "img02_broken.png" in warnings_[0]
    assert [s["image"].endswith("img02_broken.png") for s in out["skipped"]] == [True]
    assert [r["image"] for r in out["results"]] == ws["images"]
    assert out["labels"] == labels and out["templates"] == templates

    zimg = hand_image_embeddings(backbone, preprocessor, [read_rgb(p) for p in ws["images"]])
    classes = []
    for label in labels:
        z = hand_text_embeddings(backbone, preprocessor, [t.replace("{}", label) for t in templates])
        classes.append(z.mean(0) / (np.linalg.norm(z.mean(0)) + 1e-8))
    scale, bias = logit_params(backbone)
    expected = 1 / (1 + np.exp(-(scale * zimg @ np.stack(classes).T + bias)))
    got = np.array([[r["probabilities"][label] for label in labels] for r in out["results"]])
    assert np.std(expected) > 0.01
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    for r, row in zip(out["results"], expected):
        assert [e["label"] for e in r["top_k"]] == [labels[j] for j in np.argsort(-row)[:2]]
    assert out["plot"] == str(root / "classify.png")
    assert png_size(root / "classify.png") == (800, 300 * len(ws["images"]))


@pytest.mark.large
def test_classify_naflex_preset(ws):
    from keras_siglip2.models import SigLIP2Backbone
    from keras_siglip2.preprocessing import SigLIP2Preprocessor
    from keras_siglip2.tasks import SigLIP2ZeroShotClassifier

    preset = make_tiny_preset(ws["root"] / "naflex_preset", ws["spm"].read_bytes(), naflex=True)
    # --match transformers: the images go through HF's preprocessing instead of the
    # preset's (big_vision).
    proc = ok(run_cli("classify", *ws["images"], "--labels", "chat,chien", "--lang", "fr",
                      "--preset", preset, "--json", "--match", "transformers"))
    out = json.loads(proc.stdout)
    assert out["templates"] == ["une photo de {}.", "une image de {}.", "une photo en gros plan de {}."]
    backbone = SigLIP2Backbone.from_preset(preset)
    preprocessor = SigLIP2Preprocessor.from_preset(preset, match="transformers")
    assert preprocessor.image_converter.match == "transformers"
    assert SigLIP2Preprocessor.from_preset(preset).image_converter.match == "big_vision"
    clf = SigLIP2ZeroShotClassifier(backbone, preprocessor, ["chat", "chien"], out["templates"])
    expected = clf.predict(ws["images"])
    got = np.array([[r["probabilities"][c] for c in ("chat", "chien")] for r in out["results"]])
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    proc = run_cli("classify", *ws["images"], "--labels", "a", "--preset", preset,
                   "--match", "pil")
    assert proc.returncode != 0 and "big_vision" in proc.stderr and "transformers" in proc.stderr


# --------------------------------------------------------------------------- embed


def test_embed_npz(ws, model):
    from keras_siglip2.tasks.retrieval import read_index

    backbone, preprocessor = model
    root = ws["root"]
    texts = ["a photo of a cat", "une photo de chien"]
    proc = ok(run_cli(
        "embed", "--images", *ws["images"][:3], "--texts", *texts, "--out", root / "emb.npz",
        "--preset", ws["preset"], "--json",
    ))
    summary = json.loads(proc.stdout)
    assert summary["images"] == 3 and summary["texts"] == 2 and summary["dim"] == 32
    index = read_index(root / "emb.npz")
    assert index["image_ids"] == ws["images"][:3] and index["text_ids"] == texts
    zimg = hand_image_embeddings(backbone, preprocessor, [read_rgb(p) for p in ws["images"][:3]])
    np.testing.assert_allclose(index["image_embeddings"], zimg, atol=TOL, rtol=0)
    ztxt = hand_text_embeddings(backbone, preprocessor, texts)
    np.testing.assert_allclose(index["text_embeddings"], ztxt, atol=TOL, rtol=0)


@pytest.mark.large
def test_embed_npy(ws, model):
    backbone, preprocessor = model
    root = ws["root"]
    (root / "texts.txt").write_text("a red square\n\na blue circle\n", encoding="utf-8")
    proc = ok(run_cli("embed", "--texts-file", root / "texts.txt", "--out", root / "t.npy",
                      "--preset", ws["preset"]))
    assert "2 text embeddings" in proc.stdout
    expected = hand_text_embeddings(backbone, preprocessor, ["a red square", "a blue circle"])
    np.testing.assert_allclose(np.load(root / "t.npy"), expected, atol=TOL, rtol=0)


# --------------------------------------------------------------------------- retrieve


def test_retrieve(ws, model):
    from keras_siglip2.tasks.retrieval import read_index

    backbone, preprocessor = model
    root = ws["root"]
    texts = ["a photo of a cat", "a red square", "two dogs in the park"]
    proc = ok(run_cli(
        "retrieve", "--images", root / "images", "--texts", *texts,
        "--query", "a red ball", "--query-image", ws["images"][1], "--k", "3",
        "--preset", ws["preset"], "--json", "--plot", root / "grid.png",
        "--save-index", root / "index.npz",
    ))
    out = json.loads(proc.stdout)
    assert out["indexed_images"] == 4 and out["indexed_texts"] == 3
    assert out["skipped"][0]["image"].endswith("img02_broken.png")
    zimg = hand_image_embeddings(backbone, preprocessor, [read_rgb(p) for p in ws["images"]])
    ztxt = hand_text_embeddings(backbone, preprocessor, texts)
    scale, bias = logit_params(backbone)

    text_query, image_query = out["queries"]
    cos = zimg @ hand_text_embeddings(backbone, preprocessor, ["a red ball"])[0]
    order = np.argsort(-cos)[:3]
    assert text_query["target"] == "images"
    assert [r["id"] for r in text_query["results"]] == [ws["images"][i] for i in order]
    np.testing.assert_allclose([r["score"] for r in text_query["results"]], cos[order], atol=TOL)
    np.testing.assert_allclose([r["probability"] for r in text_query["results"]],
                               1 / (1 + np.exp(-(scale * cos[order] + bias))), atol=TOL)
    cos_t = ztxt @ zimg[1]
    assert image_query["target"] == "texts"
    assert [r["id"] for r in image_query["results"]] == [texts[i] for i in np.argsort(-cos_t)]
    assert png_size(root / "grid.png") == (200 * 4, 250)
    saved = read_index(root / "index.npz")
    assert saved["image_ids"] == ws["images"] and saved["text_ids"] == texts


# --------------------------------------------------------------------------- convert


def check_preset_matches(out_dir, reference):
    """The preset written by the command holds exactly the weights of the same
    checkpoint converted in this process."""
    from keras_siglip2.models import SigLIP2Backbone

    loaded = SigLIP2Backbone.from_preset(str(out_dir))
    expected = {v.path: np.asarray(v) for v in reference.weights}
    got = {v.path: np.asarray(v) for v in loaded.weights}
    assert sorted(got) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_convert_big_vision(ws):
    from keras_siglip2.convert import from_big_vision
    from keras_siglip2.preprocessing import SigLIP2Preprocessor

    out_dir = ws["root"] / "bv_preset"
    proc = ok(run_cli("convert", "--from", "big_vision", fixture_path("fixed_b"), out_dir,
                      "--tokenizer", ws["spm"], "--json"))
    summary = json.loads(proc.stdout)
    assert summary["out_dir"] == str(out_dir) and summary["tokenizer"] is True
    check_preset_matches(out_dir, from_big_vision(fixture_path("fixed_b")))
    preprocessor = SigLIP2Preprocessor.from_preset(str(out_dir))  # complete preset
    assert preprocessor.tokenizer.vocabulary_size() > 100
    assert preprocessor.image_converter.match == "big_vision"


def test_failed_convert_leaves_no_output(ws):
    root = ws["root"]
    (root / "bad_tokenizer.model").write_bytes(b"this is not a sentencepiece model")
    out_dir = root / "failed_preset"
    proc = run_cli("convert", "--from", "big_vision", fixture_path("fixed_b"), out_dir,
                   "--tokenizer", root / "bad_tokenizer.model")
    assert proc.returncode != 0
    lines = siglip2_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("siglip2: error:") and "SentencePiece" in lines[0]
    assert not out_dir.exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".partial-")]


@pytest.mark.large
def test_failed_convert_corrupt_checkpoint(ws):
    root = ws["root"]
    data = fixture_path("fixed_b").read_bytes()
    (root / "truncated.npz").write_bytes(data[: len(data) // 2])
    proc = run_cli("convert", "--from", "big_vision", root / "truncated.npz", root / "t_preset")
    assert proc.returncode != 0
    lines = siglip2_lines(proc.stderr)
    assert len(lines) == 1 and "truncated or corrupt" in lines[0]
    assert not (root / "t_preset").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".partial-")]


@pytest.mark.large
def test_convert_transformers(ws):
    import torch  # noqa: F401  (the [test] extra installs it: its absence fails)
    from keras_siglip2.convert import from_transformers
    from tests.convert.test_transformers import tiny_hf_model

    hf_dir = ws["root"] / "hf_model"
    tiny_hf_model().save_pretrained(hf_dir)
    out_dir = ws["root"] / "hf_preset"
    summary = json.loads(ok(run_cli("convert", "--from", "transformers", hf_dir, out_dir,
                                    "--json")).stdout)
    assert summary["tokenizer"] is False and summary["vision"] == "SigLIP2VisionEncoder"
    check_preset_matches(out_dir, from_transformers(hf_dir))
    with open(out_dir / "image_converter.json") as f:  # HF's preprocessing recorded
        assert json.load(f)["config"]["match"] == "transformers"


@pytest.mark.large
def test_convert_keras_hub(ws):
    from keras_siglip2.convert import from_keras_hub
    from tests.convert.test_keras_hub import tiny_keras_hub_backbone

    source = tiny_keras_hub_backbone()
    kh_dir = ws["root"] / "kh_preset_src"
    source.save_to_preset(str(kh_dir))
    out_dir = ws["root"] / "kh_preset"
    summary = json.loads(ok(run_cli("convert", "--from", "keras_hub", kh_dir, out_dir,
                                    "--json")).stdout)
    assert summary["out_dir"] == str(out_dir)
    check_preset_matches(out_dir, from_keras_hub(source))


# --------------------------------------------------------------------------- export


@pytest.mark.large
def test_export_saved_model(ws):
    out = ws["root"] / "exported"
    proc = ok(run_cli("export", ws["preset"], out, "--format", "saved_model", "--json"))
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["format"] == "saved_model"
    assert (Path(summary["out_path"]) / "saved_model.pb").is_file()


# --------------------------------------------------------------------------- train


def trained_weights_changed(source_preset, trained_preset):
    """Names of the weights that training changed (all finite)."""
    from keras_siglip2.models import SigLIP2Backbone

    def weights(preset):
        return {v.path: np.asarray(v) for v in SigLIP2Backbone.from_preset(str(preset)).weights}

    before, after = weights(source_preset), weights(trained_preset)
    assert sorted(before) == sorted(after)
    assert all(np.all(np.isfinite(v)) for v in after.values())
    return [k for k in before if not np.array_equal(before[k], after[k])]


def test_train_json(ws):
    """Fine-tuning with the sigmoid loss alone (one compiled train step): the JSON
    summary on stdout, and the trained preset that every `--preset` takes."""
    from keras_siglip2.preprocessing import SigLIP2Preprocessor

    out = ws["root"] / "train_sigmoid"
    proc = ok(run_cli(
        "train", "--preset", ws["preset"], "--data", ws["csv"], "--steps", "2",
        "--batch-size", "4", "--out", out, "--no-decoder", "--no-self-distillation",
        "--no-masked-prediction", "--learning-rate", "1e-3", "--json",
    ))
    summary = json.loads(proc.stdout)  # stdout holds the JSON alone
    assert summary["steps"] == 2 and summary["start_step"] == 0
    assert summary["losses"] == ["sigmoid"]
    loss = summary["final_losses"]["sigmoid"]
    assert np.isfinite(loss) and loss > 0
    assert summary["out_dir"] == str(out) and summary["preset_path"] == str(out / "preset")
    on_disk = json.loads(Path(summary["summary_path"]).read_text())
    assert on_disk["steps"] == 2 and on_disk["preset_path"] == summary["preset_path"]
    changed = trained_weights_changed(ws["preset"], summary["preset_path"])
    assert any("vision_encoder" in k for k in changed), changed
    assert any("text_encoder" in k for k in changed), changed
    SigLIP2Preprocessor.from_preset(summary["preset_path"])  # complete: tokenizer + converter


@pytest.mark.large
def test_train_whole_recipe(ws):
    """`siglip2 train` as typed first, with every loss of the recipe (sigmoid + LocCa,
    SILC / TIPS from 80 % of the steps) and the progress output."""
    out = ws["root"] / "train_recipe"
    proc = ok(run_cli("train", "--preset", ws["preset"], "--data", ws["csv"], "--steps", "5",
                      "--batch-size", "4", "--out", out))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["losses"] == ["sigmoid", "locca", "silc", "tips"]
    for term in summary["losses"]:
        assert np.isfinite(summary["final_losses"][term]), term
    assert str(out / "preset") in proc.stdout
    assert trained_weights_changed(ws["preset"], out / "preset")


# --------------------------------------------------------------------------- demo


@pytest.mark.large
def test_demo(ws):
    """`siglip2 demo --out DIR --steps N` (the default tiny model, the shortest run):
    summary.json with the documented keys, a readable loss plot, the preset and the
    export it names."""
    from keras_siglip2.models import SigLIP2Backbone

    out = ws["root"] / "demo"
    proc = ok(run_cli("demo", "--out", out, "--steps", "4", timeout=900))
    assert "summary.json" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert {"zero_shot_accuracy", "chance_accuracy", "recall_at_1", "stages", "final_losses",
            "export_path"} <= set(summary)
    assert set(summary["zero_shot_accuracy"]) == {"en", "fr", "de", "es", "overall"}
    assert all(0 <= v <= 1 for v in summary["zero_shot_accuracy"].values())
    assert summary["chance_accuracy"] == pytest.approx(1 / 24)
    assert set(summary["recall_at_1"]) == {"image_to_text", "text_to_image"}
    assert len(summary["stages"]) == 3 and summary["stages"][0]["name"] == "sigmoid+locca"
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    width, height = png_size(summary["plot_path"])
    assert width > 100 and height > 100
    assert os.path.exists(summary["export_path"])
    backbone = SigLIP2Backbone.from_preset(str(out / "preset"))
    assert tuple(backbone.vision_encoder.image_size) == (48, 48)  # after the switch


# --------------------------------------------------------------------------- bad input


N_BAD_INPUTS = 22


def bad_inputs(ws):
    """(argv, text the one error line must contain): N_BAD_INPUTS cases."""
    root, preset, image = ws["root"], ws["preset"], ws["images"][0]
    return [
        (["classify", root / "missing.png", "--labels", "a,b", "--preset", preset],
         "missing.png' does not exist"),
        (["classify", root / "empty", "--labels", "a,b", "--preset", preset],
         "contains no images"),
        (["classify", image, "--labels", " , ", "--preset", preset], "names no label"),
        (["classify", image, "--labels", "cat,,dog", "--preset", preset], "label 2 is empty"),
        (["classify", image, "--labels", "cat,dog,cat", "--preset", preset],
         "duplicate class names: 'cat'"),
        (["classify", image, "--labels", "a,b", "--preset", "siglip2_tiny_does_not_exist"],
         "Unknown preset 'siglip2_tiny_does_not_exist'"),
        (["classify", image, "--labels", "a,b", "--preset", root / "not_a_preset"],
         "is not a preset directory"),
        (["classify", image, "--labels", "a,b", "--templates", "a photo", "--preset", preset],
         "exactly once"),
        (["classify", image, "--labels", "a,b", "--plot", root / "x.jpg", "--preset", preset],
         "ending in .png"),
        (["embed", "--out", root / "e.npz", "--preset", preset], "Nothing to embed"),
        (["embed", "--images", image, "--texts", "a", "--out", root / "e.npy", "--preset", preset],
         "holds one array"),
        (["retrieve", "--images", root / "empty", "--query", "a", "--preset", preset],
         "contains no images"),
        (["retrieve", "--images", image, "--preset", preset], "at least one --query"),
        (["retrieve", "--index", root / "nope.npz", "--query", "a", "--preset", preset],
         "nope.npz' does not exist"),
        (["classify", image, "--labels", "a,b", "--preset", no_tokenizer_preset(ws)],
         "the preset has no tokenizer"),
        (["classify", image, "--labels", "", "--preset", preset], "names no label"),
        (["classify", image, "--labels", "a,b", "--preset", root / "no_such_preset"],
         "no_such_preset' does not exist"),
        (["embed", "--images", root / "missing.png", "--out", root / "e.npz",
          "--preset", preset], "missing.png' does not exist"),
        (["train", "--preset", root / "not_a_preset", "--data", ws["csv"], "--out", root / "t"],
         "is not a preset directory"),
        (["train", "--preset", "siglip2_tiny_does_not_exist", "--data", ws["csv"],
          "--out", root / "t"], "Unknown preset 'siglip2_tiny_does_not_exist'"),
        (["train", "--preset", preset, "--data", root / "missing.csv", "--out", root / "t"],
         "missing.csv' does not exist"),
        (["export", root / "not_a_preset", root / "exported_bad"], "is not a preset directory"),
    ]


def no_tokenizer_preset(ws):
    """A preset directory with weights but no tokenizer (as a big_vision conversion
    without --tokenizer writes)."""
    import shutil

    path = ws["root"] / "no_tokenizer"
    if not path.exists():
        shutil.copytree(ws["preset"], path)
        (path / "tokenizer.json").unlink()
        (path / "preprocessor.json").unlink()
    return path


def test_bad_input_in_process(ws, capsys):
    """Every bad input: exit status 1 and one `siglip2: error:` line naming the problem
    (in this process: the same `main` the command runs, without the start-up cost)."""
    cases = bad_inputs(ws)
    assert len(cases) == N_BAD_INPUTS
    for argv, expected in cases:
        code = cli.main([str(a) for a in argv])
        err = capsys.readouterr().err
        lines = siglip2_lines(err)
        assert code == 1, (argv, err)
        assert len(lines) == 1 and lines[0].startswith("siglip2: error:"), (argv, err)
        assert expected in lines[0], (argv, lines[0])


def test_only_unreadable_images(ws, capsys):
    """Unreadable images are skipped with a warning naming each; if none is left the
    command fails with one error line."""
    broken = ws["root"] / "images" / "img02_broken.png"
    code = cli.main(["classify", str(broken), "--labels", "a,b", "--preset", ws["preset"]])
    lines = siglip2_lines(capsys.readouterr().err)
    assert code == 1
    errors = [line for line in lines if line.startswith("siglip2: error:")]
    warnings_ = [line for line in lines if line.startswith("siglip2: warning:")]
    assert len(errors) == 1 and "None of the 1 images could be read" in errors[0]
    assert len(warnings_) == 1 and "img02_broken.png" in warnings_[0]
    assert len(lines) == 2


@pytest.mark.large
@pytest.mark.parametrize("case", range(N_BAD_INPUTS))
def test_bad_input_subprocess(ws, case):
    argv, expected = bad_inputs(ws)[case]
    proc = run_cli(*argv)
    lines = siglip2_lines(proc.stderr)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
