"""keras_siglip2.export and `siglip2 export`: SavedModel and LiteRT outputs equal the
Keras model's (float32, within 1e-4), checked in a fresh Python that cannot import
keras_siglip2 (nor keras_hub); bad input fails before any work."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, run_in_backend, tiny_backbone

TOLERANCE = 1e-4  # float32 embeddings and logits
# The interpreter the LiteRT files run on: ai-edge-litert, which the [test] extra installs
# (no fallback to tf.lite: if LiteRT cannot be imported, the test fails).
INTERPRETER = "ai_edge_litert"

NAFLEX_VISION = dict(type="naflex", patch_size=8, hidden_dim=32, num_layers=1, num_heads=2,
                     intermediate_dim=64, max_num_patches=16)
NAFLEX_TEXT = dict(vocabulary_size=100, hidden_dim=32, num_layers=1, num_heads=2,
                   intermediate_dim=64, max_sequence_length=16)

# Exports with the TensorFlow backend in-process (the route the subprocess also takes).
TF_EXPORTS = r"""
import json, sys
import keras
from keras_siglip2.export import export
assert keras.backend.backend() == "tensorflow"
for preset, out, fmt, tower in JOBS:
    export(preset, out, format=fmt, tower=tower)
print(json.dumps({"ok": True}))
"""

# Loads every artifact with plain TensorFlow / the LiteRT interpreter; importing
# keras_siglip2 or keras_hub raises, which proves they are not needed. (TensorFlow itself
# probes for `keras`, so that one cannot be blocked.)
FRESH_LOAD = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras_siglip2", "keras_hub"):
            raise ImportError(f"{name} must not be needed to serve the export")

sys.meta_path.insert(0, Block())
import numpy as np
import tensorflow as tf
work, interpreter_name = sys.argv[1], sys.argv[2]
if interpreter_name == "ai_edge_litert":
    from ai_edge_litert.interpreter import Interpreter
elif interpreter_name == "tf.lite":
    Interpreter = tf.lite.Interpreter
else:
    raise SystemExit(f"unknown interpreter {interpreter_name!r}")
data = dict(np.load(f"{work}/inputs.npz"))
diffs = {}


def diff(name, got, expected):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (name, got.shape, expected.shape)
    diffs[name] = float(np.abs(got - expected).max())


for kind in ("fixed", "naflex"):
    prefix = kind + "_in_"
    vision = {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}
    tokens = data[f"{kind}_token_ids"]
    model = tf.saved_model.load(f"{work}/{kind}_saved_model")
    signatures = sorted(model.signatures.keys())
    assert {"embed_images", "embed_texts", "score"} <= set(signatures), signatures
    zimg = model.signatures["embed_images"](**{k: tf.constant(v) for k, v in vision.items()})["embeddings"]
    ztxt = model.signatures["embed_texts"](token_ids=tf.constant(tokens))["embeddings"]
    diff(f"{kind}_saved_model_images", zimg, data[f"{kind}_zimg"])
    diff(f"{kind}_saved_model_texts", ztxt, data[f"{kind}_ztxt"])
    scores = model.signatures["score"](image_embeddings=zimg, text_embeddings=ztxt)
    diff(f"{kind}_saved_model_logits", scores["logits"], data[f"{kind}_logits"])
    diff(f"{kind}_saved_model_probabilities", scores["probabilities"],
         1 / (1 + np.exp(-data[f"{kind}_logits"])))

    interpreter = Interpreter(model_path=f"{work}/{kind}.tflite")
    runner = interpreter.get_signature_runner("embed_images")
    out = runner(**vision)
    diff(f"{kind}_litert_images", out["embeddings"], data[f"{kind}_zimg"])

text_runner = Interpreter(model_path=f"{work}/fixed_text.tflite").get_signature_runner("embed_texts")
diff("fixed_litert_texts", text_runner(token_ids=data["fixed_token_ids"])["embeddings"],
     data["fixed_ztxt"])
print(json.dumps({"diffs": diffs, "interpreter": interpreter_name,
                  "loaded": sorted(m for m in sys.modules
                                   if m.startswith(("keras_siglip2", "keras_hub")))}))
"""


def naflex_backbone():
    import keras

    from keras_siglip2.convert.common import build_backbone

    keras.utils.set_random_seed(1)
    backbone = build_backbone(NAFLEX_VISION, NAFLEX_TEXT)
    rng = np.random.RandomState(1)
    for v in backbone.text_encoder.head.weights:
        v.assign(rng.normal(0, 0.05, v.shape).astype("float32"))
    return backbone


def reference(backbone, vision_inputs, token_ids):
    """Normalized embeddings and logits of the Keras model (the exported functions)."""
    from keras_siglip2.layers import l2_normalize

    zimg = np.asarray(l2_normalize(backbone.get_vision_embeddings(vision_inputs)))
    ztxt = np.asarray(l2_normalize(backbone.get_text_embeddings(token_ids)))
    logits = backbone({**vision_inputs, "token_ids": token_ids})["vision_logits"]
    return zimg, ztxt, np.asarray(logits)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from keras_siglip2 import cli
    from keras_siglip2.preprocessing import SigLIP2NaFlexImageConverter

    work = tmp_path_factory.mktemp("export")
    rng = np.random.RandomState(0)
    arrays = {}

    fixed = tiny_backbone()
    fixed_inputs = {"images": rng.uniform(-1, 1, (3, 32, 32, 3)).astype("float32")}
    fixed_tokens = rng.randint(0, 1000, (2, 16)).astype("int32")
    fixed.save_to_preset(str(work / "fixed_preset"))

    naflex = naflex_backbone()
    converter = SigLIP2NaFlexImageConverter(patch_size=8, max_num_patches=16)
    images = [rng.uniform(0, 255, shape).astype("float32")
              for shape in ((40, 24, 3), (16, 64, 3), (30, 30, 3))]
    naflex_inputs = {k: np.asarray(v) for k, v in converter(images).items()}
    assert (naflex_inputs["patch_mask"] == 0).any()  # some padding is exercised
    naflex_tokens = rng.randint(0, 100, (4, 16)).astype("int32")
    naflex.save_to_preset(str(work / "naflex_preset"))

    for kind, model, vision, tokens in (("fixed", fixed, fixed_inputs, fixed_tokens),
                                        ("naflex", naflex, naflex_inputs, naflex_tokens)):
        zimg, ztxt, logits = reference(model, vision, tokens)
        arrays.update({f"{kind}_in_{k}": v for k, v in vision.items()})
        arrays.update({f"{kind}_token_ids": tokens, f"{kind}_zimg": zimg,
                       f"{kind}_ztxt": ztxt, f"{kind}_logits": logits})
    np.savez(work / "inputs.npz", **arrays)

    # The command line from this (JAX) process: the weights go to a TF-backend worker.
    status = cli.main(["export", str(work / "fixed_preset"), str(work / "fixed_saved_model"),
                       "--format", "saved_model"])
    assert status == 0
    # The TensorFlow backend in-process, for the other three.
    jobs = [
        (str(work / "fixed_preset"), str(work / "fixed.tflite"), "litert", None),
        (str(work / "fixed_preset"), str(work / "fixed_text.tflite"), "litert", "text"),
        (str(work / "naflex_preset"), str(work / "naflex_saved_model"), "saved_model", None),
        (str(work / "naflex_preset"), str(work / "naflex.tflite"), "litert", None),
    ]
    run_in_backend("tensorflow", TF_EXPORTS.replace("JOBS", repr(jobs)))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    proc = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(work), INTERPRETER], env=env,
                          capture_output=True, text=True, timeout=600, cwd=str(work))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_outputs_equal_the_keras_model_in_a_fresh_process(exported):
    print("export max differences:", json.dumps(exported))  # shown with pytest -s
    assert exported["loaded"] == []  # neither keras_siglip2 nor keras_hub was imported
    expected = {f"{kind}_{what}" for kind in ("fixed", "naflex") for what in (
        "saved_model_images", "saved_model_texts", "saved_model_logits",
        "saved_model_probabilities", "litert_images")} | {"fixed_litert_texts"}
    assert exported["interpreter"] == INTERPRETER  # the LiteRT files ran on LiteRT itself
    assert set(exported["diffs"]) == expected
    for name, value in exported["diffs"].items():
        assert value <= TOLERANCE, (name, value, exported["interpreter"])


# ------------------------------------------------------------ bad input, no work done


@pytest.fixture(scope="module")
def small_backbone():
    return tiny_backbone(image_size=16, vision_width=32, text_width=32)


def test_output_path_that_exists(tmp_path, small_backbone):
    from keras_siglip2.export import export

    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export(small_backbone, tmp_path / "out")
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="model.tflite already exists"):
        export(small_backbone, tmp_path / "model.tflite", format="litert")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(format="onnx"), ValueError, r"`format`='onnx' is not supported"),
        (dict(format="litert", tower="both"), ValueError, "A LiteRT file holds one tower"),
        (dict(tower="audio"), ValueError, r"`tower`='audio' is not valid"),
    ],
)
def test_bad_arguments(tmp_path, small_backbone, kwargs, error, match):
    from keras_siglip2.export import export

    with pytest.raises(error, match=match):
        export(small_backbone, tmp_path / "out", **kwargs)
    assert os.listdir(tmp_path) == []


def test_pretrainer_needs_a_tower(tmp_path, small_backbone):
    from keras_siglip2.export import export
    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer

    pretrainer = SigLIP2Pretrainer(small_backbone, decoder=None, self_distillation=False,
                                   masked_prediction=False)
    with pytest.raises(ValueError, match="training-only model.*tower='vision', 'text' or 'both'"):
        export(pretrainer, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_wrong_tower_or_model(tmp_path, small_backbone):
    import keras

    from keras_siglip2.export import export

    with pytest.raises(ValueError, match=r"vision tower only; `tower`='text'"):
        export(small_backbone.vision_encoder, tmp_path / "out", tower="text")
    with pytest.raises(TypeError, match="got Sequential"):
        export(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        export(str(tmp_path / "no_such_preset"), tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_cli_errors_in_one_line(tmp_path, capsys):
    from keras_siglip2 import cli

    (tmp_path / "out").mkdir()
    assert cli.main(["export", str(ROOT / "no_such_preset"), str(tmp_path / "x")]) == 1
    assert cli.main(["export", str(tmp_path), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("siglip2: error: ") for line in err), err
    assert "already exists" in err[1]
    with pytest.raises(SystemExit):
        cli.main(["export", "a", "b", "--format", "onnx"])
