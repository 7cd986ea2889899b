"""Fixtures for the preprocessing tests: a tiny multilingual SentencePiece model
trained on the fly (Gemma's special ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3), and
tokenizer / converter / backbone builders. Everything runs offline in a few seconds."""

import io

import numpy as np
import pytest

SEQUENCE_LENGTH = 16
IMAGE_SIZE = 8

CORPUS = [
    "a photo of a cat sitting on the grass.",
    "the quick brown fox jumps over the lazy dog!",
    "two dogs are playing with a red ball in the park",
    "a man riding a bicycle down the street, at night.",
    "une photo d'un chat assis sur l'herbe.",
    "l'école française est à côté de la forêt",
    "le garçon mange une crème brûlée à noël",
    "où est la bibliothèque ? près de l'église",
    "一只猫坐在草地上。",
    "我们在公园里玩红色的球",
    "今天天气很好，我们去学校",
    "एक बिल्ली घास पर बैठी है।",
    "हम पार्क में लाल गेंद से खेल रहे हैं",
    "आज मौसम बहुत अच्छा है",
]


def train_sentencepiece(corpus, **overrides):
    import sentencepiece as spm

    options = dict(
        vocab_size=400,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    options.update(overrides)
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus) * 4), model_writer=writer, **options
    )
    return writer.getvalue()


@pytest.fixture(scope="session")
def spm_proto():
    return train_sentencepiece(CORPUS)


@pytest.fixture(scope="session")
def spm_processor(spm_proto):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=spm_proto)


@pytest.fixture
def tokenizer(spm_proto):
    from keras_siglip2.preprocessing import SigLIP2Tokenizer

    return SigLIP2Tokenizer(proto=spm_proto, sequence_length=SEQUENCE_LENGTH)


@pytest.fixture
def image_converter():
    from keras_siglip2.preprocessing import SigLIP2ImageConverter

    return SigLIP2ImageConverter(image_size=IMAGE_SIZE)


@pytest.fixture(scope="session")
def small_backbone(spm_processor):
    from keras_siglip2.models import (
        SigLIP2Backbone,
        SigLIP2TextEncoder,
        SigLIP2VisionEncoder,
    )

    vision = SigLIP2VisionEncoder(
        patch_size=4,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        image_size=IMAGE_SIZE,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=spm_processor.vocab_size(),
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        projection_dim=8,
        max_sequence_length=SEQUENCE_LENGTH,
    )
    return SigLIP2Backbone(vision, text)


@pytest.fixture
def backbone_preset(tmp_path):
    """A preset directory whose config.json names SigLIP2Backbone, which is all
    keras-hub reads from it to pick the tokenizer / converter / preprocessor classes
    (no weights: building even a tiny backbone costs seconds)."""
    import json

    preset = tmp_path / "preset"
    preset.mkdir()
    config = {
        "module": "keras_siglip2.models.backbone",
        "class_name": "SigLIP2Backbone",
        "config": {},
        "registered_name": "keras_siglip2>SigLIP2Backbone",
    }
    (preset / "config.json").write_text(json.dumps(config))
    return str(preset)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- Independent references for the image converters ---------------------------------

ONE_LEVEL = 1.0 / 127.5  # one uint8 level on the [-1, 1] scale
EXTREME_SHAPES = ((1, 600), (600, 1), (7, 11))


def skimage_photos():
    """RGB photos bundled with scikit-image (no download; `coffee` is in the real-photo
    fixture already), plus extreme aspect ratios (1 x 600, 600 x 1, 7 x 11) cut from
    the Hubble deep field."""
    from skimage import data

    photos = {name: getattr(data, name)() for name in ("chelsea", "rocket", "hubble_deep_field")}
    for h, w in EXTREME_SHAPES:
        photos[f"{h}x{w}"] = np.ascontiguousarray(photos["hubble_deep_field"][200:200 + h, 300:300 + w])
    return photos


def bilinear_reference(image, size):
    """float64 bilinear resize with half-pixel centres and clamped edges, written from
    the definition (TensorFlow's `resize_bilinear(half_pixel_centers=True)`, i.e.
    `tf.image.resize(antialias=False)`), separable: rows, then columns."""

    def axis_matrix(n_in, n_out):
        centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        low = np.floor(centres)
        frac = centres - low
        matrix = np.zeros((n_out, n_in))
        for i, (lo, f) in enumerate(zip(low.astype(int), frac)):
            matrix[i, min(max(lo, 0), n_in - 1)] += 1.0 - f
            matrix[i, min(max(lo + 1, 0), n_in - 1)] += f
        return matrix

    image = np.asarray(image, np.float64)
    rows = axis_matrix(image.shape[0], size[0])
    cols = axis_matrix(image.shape[1], size[1])
    return np.einsum("pw,owc->opc", cols, np.einsum("oh,hwc->owc", rows, image))


def hf_fixed(image, size):
    """Hugging Face `SiglipImageProcessorPil` on one uint8 image: (size, size, 3) float."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    processor = SiglipImageProcessorPil(size={"height": size, "width": size})
    out = processor(images=[image], return_tensors="np", input_data_format="channels_last")
    out = out["pixel_values"][0]
    return np.transpose(out, (1, 2, 0))


def hf_naflex(image, patch_size, max_num_patches):
    """Hugging Face `Siglip2ImageProcessorPil` on one uint8 image: (real patches,
    (rows, cols))."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import (
        Siglip2ImageProcessorPil,
    )

    processor = Siglip2ImageProcessorPil(patch_size=patch_size, max_num_patches=max_num_patches)
    out = processor(images=[image], return_tensors="np", input_data_format="channels_last")
    rows, cols = (int(v) for v in out["spatial_shapes"][0])
    return out["pixel_values"][0][: rows * cols], (rows, cols)


def assert_close_to_reference(got, expected, max_diff=ONE_LEVEL + 1e-6, mean_diff=1e-3):
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))
    assert diff.max() <= max_diff and diff.mean() < mean_diff, (diff.max(), diff.mean())
    return diff
