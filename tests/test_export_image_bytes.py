"""The `embed_image_bytes` signature of a SavedModel export: encoded image files in,
the preset's own preprocessing (its `match` mode) in the graph, embeddings out equal to
the Keras model on the converter's output (float32, within 1e-4), in a fresh Python
that cannot import keras_siglip2 or keras_hub."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import tiny_backbone
from tests.test_export import naflex_backbone

TOLERANCE = 1e-4
SIZES = ((50, 37), (20, 64), (32, 32), (97, 41))

FRESH_LOAD = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras_siglip2", "keras_hub"):
            raise ImportError(f"{name} must not be needed to serve the export")

sys.meta_path.insert(0, Block())
import numpy as np
import tensorflow as tf
work = sys.argv[1]
files = json.load(open(f"{work}/files.json"))
blobs = tf.constant([open(f, "rb").read() for f in files])
out = {}
for kind in ("fixed", "naflex"):
    model = tf.saved_model.load(f"{work}/{kind}_saved_model")
    out[kind] = model.signatures["embed_image_bytes"](image_bytes=blobs)["embeddings"].numpy().tolist()
print(json.dumps(out))
"""


def write_pngs(folder):
    from PIL import Image

    rng = np.random.RandomState(3)
    paths = []
    for i, (h, w) in enumerate(SIZES):
        # Smooth gradients plus noise: resize modes differ on real-photo-like content.
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([yy * 255 / h, xx * 255 / w, (yy + xx) * 127 / (h + w)], -1)
        image = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths


def embeddings(backbone, converter, arrays):
    from keras_siglip2.layers import l2_normalize

    rows = []
    for array in arrays:
        inputs = converter([array]) if hasattr(converter, "max_num_patches") else {
            "images": converter(array[None])}
        rows.append(np.asarray(l2_normalize(backbone.get_vision_embeddings(inputs)))[0])
    return np.stack(rows)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from keras_siglip2.export import export
    from keras_siglip2.preprocessing import SigLIP2ImageConverter, SigLIP2NaFlexImageConverter
    from keras_siglip2.tasks.images import load_image

    work = tmp_path_factory.mktemp("export_bytes")
    files = write_pngs(work)
    (work / "files.json").write_text(json.dumps(files))
    arrays = [load_image(f) for f in files]

    # A fixed preset that records match="transformers": exported from its directory.
    fixed = tiny_backbone()
    fixed_hf = SigLIP2ImageConverter(image_size=(32, 32), match="transformers")
    fixed.save_to_preset(str(work / "fixed_preset"))
    fixed_hf.save_to_preset(str(work / "fixed_preset"))
    export(str(work / "fixed_preset"), work / "fixed_saved_model")

    # A NaFlex model object with its converter passed explicitly.
    naflex = naflex_backbone()
    naflex_bv = SigLIP2NaFlexImageConverter(patch_size=8, max_num_patches=16)
    export(naflex, work / "naflex_saved_model", image_converter=naflex_bv)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    proc = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(work)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=str(work))
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = {k: np.asarray(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    expected = {
        "fixed": embeddings(fixed, fixed_hf, arrays),
        "fixed_big_vision": embeddings(fixed, SigLIP2ImageConverter(image_size=(32, 32)), arrays),
        "naflex": embeddings(naflex, naflex_bv, arrays),
    }
    return got, expected


def test_fixed_preset_preprocesses_as_its_recorded_mode(served):
    got, expected = served
    np.testing.assert_allclose(got["fixed"], expected["fixed"], atol=TOLERANCE, rtol=0)
    # The mode matters: big_vision's resize would give other embeddings.
    assert np.abs(got["fixed"] - expected["fixed_big_vision"]).max() > 10 * TOLERANCE


def test_naflex_model_with_its_converter(served):
    got, expected = served
    np.testing.assert_allclose(got["naflex"], expected["naflex"], atol=TOLERANCE, rtol=0)


def test_converter_that_does_not_fit_the_tower():
    from keras_siglip2.export import _decoded_image_spec
    from keras_siglip2.preprocessing import SigLIP2ImageConverter, SigLIP2NaFlexImageConverter

    fixed = tiny_backbone().vision_encoder
    with pytest.raises(ValueError, match=r"resizes to \(64, 64\).*\(32, 32\)"):
        _decoded_image_spec(fixed, SigLIP2ImageConverter(image_size=(64, 64)))
    with pytest.raises(ValueError, match="NaFlex"):
        _decoded_image_spec(naflex_backbone().vision_encoder,
                            SigLIP2ImageConverter(image_size=(32, 32)))
    with pytest.raises(ValueError, match="NaFlex converter but the image tower has a fixed"):
        _decoded_image_spec(fixed, SigLIP2NaFlexImageConverter(patch_size=8))
