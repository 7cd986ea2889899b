"""Fixtures for the task tests: a tiny SentencePiece model trained on the fly, tiny
random fixed-resolution and NaFlex backbones with their preprocessors, tiny preset
directories (also used by tests/test_cli.py) and small PNG files. All offline."""

import functools

import numpy as np
import pytest

from tests.preprocessing.conftest import CORPUS, train_sentencepiece

SEQUENCE_LENGTH = 16
IMAGE_SIZE = 16
PATCH_SIZE = 8
WIDTH = 32
NAFLEX_MAX_PATCHES = 16

# Words the tests use as class names / captions, so the tokenizer knows them.
EXTRA_CORPUS = [
    "a photo of a cat. a photo of a dog. a photo of a bird. a red square, a blue circle.",
    "une photo de chat. une photo de chien. 猫的照片。狗的照片。",
]


def tiny_spm_proto():
    return train_sentencepiece(CORPUS + EXTRA_CORPUS)


@functools.cache
def _guides_smoke():
    """guides/_smoke.py (the guides' offline stand-ins; not part of the package), loaded
    once."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "guides" / "_smoke.py"
    spec = importlib.util.spec_from_file_location("guides_smoke", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_tiny_backbone(vocabulary_size, naflex=False, image_size=IMAGE_SIZE, num_layers=1,
                        seed=0):
    """The guides' tiny random backbone (`_smoke.tiny_backbone`: logits spread out, the
    text head random and b = 0) at the tests' sizes."""
    smoke = _guides_smoke()
    assert (smoke.PATCH_SIZE, smoke.WIDTH, smoke.SEQUENCE_LENGTH) == (
        PATCH_SIZE, WIDTH, SEQUENCE_LENGTH)
    return smoke.tiny_backbone(vocabulary_size, naflex=naflex, image_size=image_size,
                               max_num_patches=NAFLEX_MAX_PATCHES, num_layers=num_layers,
                               seed=seed)


def build_preprocessor(proto, backbone):
    from keras_siglip2.preprocessing import (
        SigLIP2ImageConverter,
        SigLIP2NaFlexImageConverter,
        SigLIP2Preprocessor,
        SigLIP2Tokenizer,
    )

    tokenizer = SigLIP2Tokenizer(proto=proto, sequence_length=SEQUENCE_LENGTH)
    vision = backbone.vision_encoder
    if hasattr(vision, "image_size"):
        converter = SigLIP2ImageConverter(image_size=tuple(vision.image_size))
    else:
        converter = SigLIP2NaFlexImageConverter(vision.patch_size, vision.max_num_patches)
    return SigLIP2Preprocessor(tokenizer=tokenizer, image_converter=converter)


def vocabulary_size(proto):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=proto).vocab_size()


def make_tiny_preset(out_dir, proto, naflex=False, seed=0):
    """Writes a complete tiny preset (backbone, tokenizer, image converter,
    preprocessor) to `out_dir` and returns its path."""
    from keras_siglip2.convert import save_preset

    backbone = build_tiny_backbone(vocabulary_size(proto), naflex=naflex, seed=seed)
    preprocessor = build_preprocessor(proto, backbone)
    save_preset(backbone, out_dir, tokenizer=preprocessor.tokenizer,
                image_converter=preprocessor.image_converter)
    return str(out_dir)


def write_images(folder, sizes, seed=0, prefix="img"):
    """Random-pattern PNGs (different per file) of the given (height, width) sizes;
    returns their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        base = rng.randint(0, 256, (4, 4, 3)).astype(np.uint8)
        image = np.kron(base, np.ones((h // 4 + 1, w // 4 + 1, 1), np.uint8))[:h, :w]
        noise = rng.randint(0, 40, (h, w, 3))
        image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
        path = folder / f"{prefix}{i:02d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths


def read_rgb(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def hand_image_embeddings(backbone, preprocessor, arrays):
    """Normalized image embeddings computed eagerly, one image at a time (no
    batching, padding or jit), in float64."""
    rows = []
    for array in arrays:
        z = np.asarray(backbone.get_vision_embeddings(preprocessor({"images": [array]})), np.float64)
        rows.append(z[0] / (np.linalg.norm(z[0]) + 1e-8))
    return np.stack(rows)


def hand_text_embeddings(backbone, preprocessor, texts):
    """Normalized text embeddings computed eagerly, one text at a time."""
    rows = []
    for text in texts:
        token_ids = np.asarray(preprocessor.tokenizer([text]))
        z = np.asarray(backbone.get_text_embeddings(token_ids), np.float64)
        rows.append(z[0] / (np.linalg.norm(z[0]) + 1e-8))
    return np.stack(rows)


def logit_params(backbone):
    t = float(np.asarray(backbone.logit_head.log_temperature).reshape(-1)[0])
    b = float(np.asarray(backbone.logit_head.bias).reshape(-1)[0])
    return np.exp(t), b


@pytest.fixture(scope="session")
def spm_proto():
    return tiny_spm_proto()


@pytest.fixture(scope="session")
def fixed_model(spm_proto):
    backbone = build_tiny_backbone(vocabulary_size(spm_proto))
    return backbone, build_preprocessor(spm_proto, backbone)


@pytest.fixture(scope="session")
def naflex_model(spm_proto):
    backbone = build_tiny_backbone(vocabulary_size(spm_proto), naflex=True, seed=1)
    return backbone, build_preprocessor(spm_proto, backbone)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    sizes = [(16, 16), (24, 16), (20, 30), (32, 32), (16, 16), (16, 16), (24, 16), (20, 30)]
    return folder, write_images(folder, sizes)
