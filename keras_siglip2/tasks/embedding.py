"""Batched, L2-normalized image and text embeddings of a `SigLIP2Backbone`: the engine
shared by the zero-shot classifier, the retriever and the `siglip2` command.

SigLIP (and SigLIP 2, paper sec. 2.1) compares L2-normalized embeddings: the logit of an
(image, text) pair is exp(t) * cos(zimg, ztxt) + b, and its sigmoid is the probability
that the pair matches. Embeddings here are normalized exactly as the model does,
z / (||z|| + 1e-8), so scores computed from them equal the backbone's logits.
"""

import collections
import weakref

import keras
import numpy as np

try:
    import tensorflow as tf
except ImportError:  # The eager preprocessing path works without TensorFlow.
    tf = None

from keras_siglip2.console import progress_bar
from keras_siglip2.layers.logit_head import l2_normalize
from keras_siglip2.media.images import as_image_list, check_files_exist, describe, read_images
from keras_siglip2.checks import check_positive_int

# What `SigLIP2Embedder.embed_images` returns: the normalized embeddings (N, D) of the
# readable images, their positions and names (file path or "image i") in the input
# list (folders expanded), and (name, reason) of every skipped unreadable file.
EmbeddedImages = collections.namedtuple("EmbeddedImages", "embeddings kept names skipped")


def normalize(x, axis=-1):
    """`layers.l2_normalize` (the model's z / (||z|| + 1e-8)) of an array, as a float32
    NumPy array."""
    x = keras.ops.convert_to_tensor(np.asarray(x, dtype=np.float32))
    return np.asarray(keras.ops.convert_to_numpy(l2_normalize(x, axis=axis)), np.float32)


def sigmoid(x):
    """Numerically stable logistic function in NumPy."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x)).astype(np.float32)


def check_texts(texts, name="texts"):
    """A str or a non-empty list of str -> list of str; TypeError / ValueError else."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"`{name}` must be a str or a list of str; got {type(texts).__name__}.")
    if not texts:
        raise ValueError(f"`{name}` is empty; expected at least one text.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"`{name}[{i}]` must be a str; got {type(text).__name__}: {text!r}."
            )
    return list(texts)


def _check_batch_size(batch_size):
    return check_positive_int("batch_size", batch_size)


def check_compatible(backbone, preprocessor):
    """Raises a clear error unless `preprocessor` produces inputs `backbone` takes."""
    for attr in ("vision_encoder", "text_encoder", "logit_head"):
        if not hasattr(backbone, attr):
            raise TypeError(
                "`backbone` must be a SigLIP2Backbone (with vision_encoder, text_encoder "
                f"and logit_head); got {type(backbone).__name__}."
            )
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is None:
        raise TypeError(
            "`preprocessor` must be a SigLIP2Preprocessor (tokenizer + image converter); "
            f"got {type(preprocessor).__name__}."
        )
    text = backbone.text_encoder
    length = getattr(tokenizer, "sequence_length", None)
    if length is not None and length > text.max_sequence_length:
        raise ValueError(
            f"The tokenizer pads texts to {length} tokens but the text tower takes at most "
            f"{text.max_sequence_length}; load the preprocessor of the same preset."
        )
    vocabulary = tokenizer.vocabulary_size()
    if vocabulary > text.vocabulary_size:
        raise ValueError(
            f"The tokenizer has {vocabulary} tokens but the text tower's vocabulary has "
            f"{text.vocabulary_size}; load the preprocessor of the same preset."
        )
    converter = getattr(preprocessor, "image_converter", None)
    if converter is None:
        return
    vision = backbone.vision_encoder
    naflex_tower = not hasattr(vision, "image_size")
    naflex_converter = hasattr(converter, "max_num_patches")
    if naflex_tower != naflex_converter:
        tower = "NaFlex" if naflex_tower else "fixed-resolution"
        raise ValueError(
            f"The backbone has a {tower} image tower but the preprocessor's image "
            f"converter is a {type(converter).__name__}; load the preprocessor of the "
            "same preset."
        )
    if naflex_tower:
        if converter.patch_size != vision.patch_size:
            raise ValueError(
                f"The NaFlex converter cuts {converter.patch_size}-pixel patches but the "
                f"image tower takes {vision.patch_size}-pixel patches."
            )
    elif converter.image_size is not None and tuple(converter.image_size) != tuple(vision.image_size):
        raise ValueError(
            f"The image converter resizes to {tuple(converter.image_size)} but the image "
            f"tower takes {tuple(vision.image_size)} images; load the preprocessor of the "
            "same preset."
        )


def _to_numpy_dict(inputs):
    return {k: keras.ops.convert_to_numpy(v) for k, v in inputs.items()}


def batch_rows(num_items, batch_size):
    """Rows of every forward pass for `num_items` items: the smallest power of two
    >= num_items, at most `batch_size`. Padding each batch to it keeps the number of
    compiled shapes small (one per power of two) whatever the number of items."""
    rows = 1
    while rows < num_items:
        rows *= 2
    return max(1, min(rows, batch_size))


def _pad_rows(inputs, rows):
    """Repeats the last row of every input so that the batch has `rows` rows (one
    compiled shape for every batch)."""
    n = next(iter(inputs.values())).shape[0]
    if n == rows:
        return inputs
    return {
        k: np.concatenate([v, np.repeat(v[-1:], rows - n, axis=0)], axis=0)
        for k, v in inputs.items()
    }


# One traced TensorFlow function per fixed-resolution converter (see convert_images).
_TF_CONVERTERS = weakref.WeakKeyDictionary()


def _tf_ready(array):
    """uint8 stays uint8 (the converter's uint8 round trip, as big_vision does it);
    every other dtype becomes float32."""
    array = np.asarray(array)
    return array if array.dtype == np.uint8 else array.astype(np.float32)


def _tf_converter(converter, dtype):
    """`converter` as a `tf.function` traced once per input dtype for all image sizes."""
    per_dtype = _TF_CONVERTERS.setdefault(converter, {})
    key = np.dtype(dtype).name
    if key not in per_dtype:
        per_dtype[key] = tf.function(
            converter,
            input_signature=[tf.TensorSpec((None, None, 3), tf.as_dtype(dtype))],
            reduce_retracing=True,
        )
    return per_dtype[key]


def convert_images(preprocessor, arrays):
    """The image tower's inputs (a NumPy dict) for a list of RGB arrays (H, W, 3) of
    any sizes, through `preprocessor`'s image converter (or a converter itself).

    The fixed-resolution converter runs its TensorFlow path (the one `tf.data` runs,
    equal to the eager path to ~1e-6) in a `tf.function` traced once for all image
    sizes: its eager path would compile a resize for every distinct input shape on
    JAX. The NaFlex converter already works image by image in TensorFlow."""
    converter = getattr(preprocessor, "image_converter", preprocessor)
    if converter is None or not callable(converter):
        raise ValueError(
            "This preprocessor has no image converter (a text-only preset); it cannot "
            "process images."
        )
    arrays = list(arrays)
    if tf is not None and not hasattr(converter, "max_num_patches"):
        with tf.device("cpu"):
            images = [_tf_converter(converter, a.dtype)(tf.constant(a)).numpy() for a in
                      (_tf_ready(a) for a in arrays)]
        return {"images": np.stack(images).astype(np.float32)}
    converted = converter(arrays)
    if not isinstance(converted, dict):
        converted = {"images": converted}
    return _to_numpy_dict(converted)


class SigLIP2Embedder:
    """Embeds images and texts in batches with a backbone and its preprocessor.

    Args:
        backbone: a `SigLIP2Backbone` (fixed-resolution or NaFlex image tower).
        preprocessor: the matching `SigLIP2Preprocessor`.
        batch_size: int, the most images / texts per forward pass. Batches are
            padded to a power of two (see `batch_rows`) so the jit-compiled forward
            pass is reused across calls.

    `embed_images` / `embed_texts` return float32 NumPy arrays (N, D) normalized as
    the model normalizes them; `logits(zimg, ztxt)` = exp(t) * zimg @ ztxt.T + b.
    """

    def __init__(self, backbone, preprocessor, batch_size=32):
        check_compatible(backbone, preprocessor)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.batch_size = _check_batch_size(batch_size)

    @property
    def embedding_dim(self):
        return int(self.backbone.vision_encoder.hidden_dim)

    @property
    def logit_scale(self):
        """exp(t), the learned temperature."""
        t = keras.ops.convert_to_numpy(self.backbone.logit_head.log_temperature)
        return float(np.exp(np.asarray(t, dtype=np.float64).reshape(-1)[0]))

    @property
    def logit_bias(self):
        """b, the learned bias."""
        b = keras.ops.convert_to_numpy(self.backbone.logit_head.bias)
        return float(np.asarray(b, dtype=np.float64).reshape(-1)[0])

    def logits(self, image_embeddings, text_embeddings):
        """exp(t) * zimg @ ztxt.T + b for normalized embeddings: (N_img, N_txt)."""
        cos = np.asarray(image_embeddings, np.float32) @ np.asarray(text_embeddings, np.float32).T
        return (self.logit_scale * cos + self.logit_bias).astype(np.float32)

    def _forward(self, model, inputs, rows):
        n = next(iter(inputs.values())).shape[0]
        out = model.predict_on_batch(_pad_rows(inputs, rows))
        return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)[:n]

    def tokenize(self, texts):
        """The text tower's token ids (N, L) int32 of a str or a list of str."""
        token_ids = self.preprocessor.tokenizer(check_texts(texts))
        return np.asarray(keras.ops.convert_to_numpy(token_ids), dtype=np.int32)

    def embed_texts(self, texts, verbose=False):
        """Normalized text embeddings (N, D) of a str or a list of str."""
        return self.embed_token_ids(self.tokenize(texts), verbose=verbose)

    def embed_token_ids(self, token_ids, verbose=False):
        """Normalized text embeddings (N, D) of token ids (N, L) from `tokenize`."""
        rows = batch_rows(len(token_ids), self.batch_size)
        bar = progress_bar(len(token_ids), unit_name="text", verbose=verbose)
        chunks = []
        for start in range(0, len(token_ids), rows):
            batch = token_ids[start : start + rows]
            chunks.append(self._forward(self.backbone.text_encoder, {"token_ids": batch}, rows))
            if bar is not None:
                bar.update(start + len(batch))
        return normalize(np.concatenate(chunks, axis=0))

    def preprocess_images(self, arrays):
        """The image tower's inputs (NumPy dict) for a list of RGB arrays."""
        return convert_images(self.preprocessor, arrays)

    def embed_images(self, images, verbose=False, skip_unreadable=False):
        """Normalized image embeddings of `images` (file or folder paths, PIL images,
        arrays (H, W, C) in [0, 255] or (B, H, W, C), or a list of these).

        Returns `EmbeddedImages(embeddings (N, D), kept, names, skipped)`: `kept` and
        `names` are the positions (in the list of single images, folders expanded) and
        names of the embedded images, `skipped` `(name, reason)` of unreadable files
        (skipped with a warning when `skip_unreadable`, else a ValueError). Missing
        files raise FileNotFoundError before any work is done; no readable image at
        all raises ValueError."""
        items = as_image_list(images)
        check_files_exist(items)
        rows = batch_rows(len(items), self.batch_size)
        bar = progress_bar(len(items), unit_name="image", verbose=verbose)
        chunks, kept, skipped = [], [], []
        for start in range(0, len(items), rows):
            arrays, batch_kept, batch_skipped = read_images(
                items[start : start + rows], start=start, skip_unreadable=skip_unreadable
            )
            kept.extend(batch_kept)
            skipped.extend(batch_skipped)
            if arrays:
                inputs = self.preprocess_images(arrays)
                chunks.append(self._forward(self.backbone.vision_encoder, inputs, rows))
            if bar is not None:
                bar.update(min(start + rows, len(items)))
        if not chunks:
            raise ValueError(
                f"None of the {len(items)} images could be read (first: {skipped[0][1]})."
            )
        names = [describe(items[i], i) for i in kept]
        return EmbeddedImages(normalize(np.concatenate(chunks, axis=0)), kept, names, skipped)
