"""Offline stand-ins for the guides' smoke mode (`SIGLIP2_GUIDE_SMOKE=1`).

The guides normally load released presets and download sample images. Their smoke test
(tests/guides/test_guides.py) runs every notebook top to bottom with no network and a
tiny model instead: this module builds that model, a tiny random SigLIP 2 preset
directory (fixed-resolution or NaFlex, 1-2 layers, width 32) with a tiny SentencePiece
tokenizer trained here, and writes images of the synthetic shapes dataset
(`keras_siglip2.training.data.synthetic`) to disk. A preset directory goes wherever a
preset name goes (`from_preset`, the `siglip2` command), so the guides' code is the same
in both modes.

It is not part of the `keras_siglip2` package; the notebooks import it from this folder
only in smoke mode.
"""

import os

import numpy as np

# Tiny towers: seconds to build and run on one CPU core.
PATCH_SIZE = 8
WIDTH = 32
SEQUENCE_LENGTH = 16

# Words the guides put into prompts beyond the synthetic captions, so that the tiny
# tokenizer has pieces for them (unknown words would still work, as <unk>).
EXTRA_WORDS = (
    "cat", "dog", "car", "person", "bridge", "flower", "sunflower", "woman", "snow",
    "chat", "chien", "voiture", "Katze", "Hund", "Auto", "gato", "perro", "coche",
    "猫", "狗", "汽车", "invoice", "receipt", "document", "panorama", "text",
)


def smoke_texts():
    """What the tiny tokenizer is trained on: every phrase of the synthetic dataset
    plus every built-in prompt template filled with `EXTRA_WORDS`."""
    from keras_siglip2.tasks import TEMPLATES
    from keras_siglip2.training.data import synthetic

    texts = list(synthetic.all_phrases())
    for templates in TEMPLATES.values():
        for template in templates:
            texts.extend(template.replace("{}", w) for w in EXTRA_WORDS)
    return texts


def tiny_backbone(vocabulary_size, naflex=False, image_size=32, max_num_patches=64,
                  num_layers=1, seed=0):
    """A random `SigLIP2Backbone` with tiny towers (width 32, `num_layers` blocks)."""
    import keras

    from keras_siglip2.convert.common import build_backbone

    keras.utils.set_random_seed(seed)
    tower = dict(patch_size=PATCH_SIZE, hidden_dim=WIDTH, num_layers=num_layers,
                 num_heads=2, intermediate_dim=2 * WIDTH)
    if naflex:
        vision = dict(type="naflex", position_grid_size=4, max_num_patches=max_num_patches,
                      **tower)
    else:
        vision = dict(type="fixed", image_size=image_size, **tower)
    text = dict(vocabulary_size=vocabulary_size, hidden_dim=WIDTH, num_layers=num_layers,
                num_heads=2, intermediate_dim=2 * WIDTH, projection_dim=WIDTH,
                max_sequence_length=SEQUENCE_LENGTH)
    backbone = build_backbone(vision, text)
    # The text head starts at zero (as in big_vision): give it random values so that
    # different texts get different embeddings; b = 0 (instead of -10) so that the
    # untrained model's probabilities are spread around 0.5 rather than all ~0.
    rng = np.random.RandomState(seed)
    for variable in backbone.text_encoder.head.weights:
        variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    backbone.logit_head.bias.assign(np.zeros((1,), "float32"))
    return backbone


def tiny_preset(path, naflex=False, image_size=32, max_num_patches=64, num_layers=1, seed=0):
    """Writes a complete tiny preset (backbone, tokenizer, image converter,
    preprocessor) to `path` (reused if it already holds one) and returns the path."""
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, "preprocessor.json")):
        return path
    import sentencepiece as spm

    from keras_siglip2.convert import save_preset
    from keras_siglip2.preprocessing import (
        SigLIP2ImageConverter,
        SigLIP2NaFlexImageConverter,
        SigLIP2Tokenizer,
    )
    from keras_siglip2.training.data import synthetic

    proto = synthetic.train_tokenizer(smoke_texts())
    vocabulary_size = spm.SentencePieceProcessor(model_proto=proto).vocab_size()
    backbone = tiny_backbone(vocabulary_size, naflex, image_size, max_num_patches,
                             num_layers, seed)
    tokenizer = SigLIP2Tokenizer(proto=proto, sequence_length=SEQUENCE_LENGTH)
    if naflex:
        converter = SigLIP2NaFlexImageConverter(PATCH_SIZE, max_num_patches)
    else:
        converter = SigLIP2ImageConverter(image_size=(image_size, image_size))
    save_preset(backbone, path, tokenizer=tokenizer, image_converter=converter,
                overwrite=True)
    return path


def shape_images(folder, num_images, image_size=64, seed=0, max_objects=1):
    """Writes `num_images` PNGs of the synthetic shapes dataset to `folder`.

    Returns `(paths, captions, labels)`: the files, their English captions ("a photo
    of a red circle") and class indices into `synthetic.class_names()`."""
    from PIL import Image

    from keras_siglip2.training.data import synthetic

    os.makedirs(folder, exist_ok=True)
    data = synthetic.generate_examples(num_images, image_size=image_size, seed=seed,
                                       max_objects=max_objects, english_fraction=1.0)
    paths = []
    for i, image in enumerate(data["images"]):
        path = os.path.join(os.path.abspath(folder), f"shape_{i:03d}.png")
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths, [str(c) for c in data["captions"]], [int(x) for x in data["labels"]]
