"""Input-pipeline throughput: images per second that `image_text_dataset` delivers for
the SigLIP 2 recipe's views (paper sec. 2: the image for the sigmoid / LocCa losses,
SILC local crops and the TIPS mask, or NaFlex patches) on generated JPEGs, so that
`tools/benchmark.py` can show that input keeps up with the training step."""

import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from keras_siglip2.training.data.pipeline import image_text_dataset
from keras_siglip2.training.data.sources import write_tfrecord_shards
from keras_siglip2.checks import check_positive_int


def synthetic_jpeg_examples(num_images, image_shape=(384, 512), seed=0):
    """`num_images` (uint8 image, caption) pairs: smooth random colour fields (so JPEG
    sizes are like photos', not like noise) of `image_shape` (height, width)."""
    rng = np.random.default_rng(seed)
    height, width = image_shape
    examples = []
    for i in range(num_images):
        coarse = rng.uniform(0, 255, (height // 32 + 2, width // 32 + 2, 3)).astype(np.float32)
        image = tf.image.resize(coarse[None], (height, width), method="bicubic")[0]
        image = np.clip(image.numpy() + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        examples.append((image, f"a generated picture number {i}"))
    return examples


def measure_input_throughput(
    num_images=256,
    image_size=224,
    source_shape=(384, 512),
    batch_size=32,
    views=("image", "local", "masked"),
    num_batches=20,
    warmup_batches=3,
    seed=0,
    workdir=None,
    **dataset_kwargs,
):
    """Images per second of decode + views (+ NaFlex patchify) on generated JPEGs.

    Writes `num_images` JPEGs of `source_shape` to a TFRecord shard (in `workdir` or a
    temporary folder, removed afterwards), builds `image_text_dataset` over it (repeated),
    skips `warmup_batches` batches (graph building, buffers filling) and times
    `num_batches` more.

    Args:
        num_images, source_shape: the generated data (height, width of each JPEG).
        image_size, batch_size, views: as `image_text_dataset` (views "image", "local",
            "masked", or ("naflex",) for NaFlex patches with per-batch lengths).
        dataset_kwargs: more `image_text_dataset` arguments (e.g. `num_local_crops`,
            `local_crop_size`, `patch_size` (16 by default), `tokenizer`).

    Returns:
        {"images_per_second": float, "batches_per_second": float, "seconds": float,
         "images": int, "config": dict of the settings}.
    """
    check_positive_int("num_batches", num_batches)
    own = workdir is None
    workdir = tempfile.mkdtemp(prefix="siglip2_input_") if own else workdir
    try:
        path = write_tfrecord_shards(
            os.path.join(workdir, "bench"), synthetic_jpeg_examples(num_images, source_shape, seed),
            num_shards=1, image_format="jpeg",
        )
        kwargs = {"patch_size": 16, **dataset_kwargs}
        if "naflex" not in views:
            kwargs.setdefault("image_size", image_size)
        dataset = image_text_dataset(
            path, batch_size=batch_size, views=views, seed=seed,
            shuffle_buffer=min(num_images, 1000), num_hosts=1, host_index=0, **kwargs,
        )
        iterator = iter(dataset)
        for _ in range(warmup_batches):
            next(iterator)
        start = time.perf_counter()
        for _ in range(num_batches):
            batch = next(iterator)
        # Wait for the values (tf.data has produced them; this is a cheap sync).
        _ = {k: v.shape for k, v in batch.items()}
        seconds = time.perf_counter() - start
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    images = num_batches * batch_size
    return {
        "images_per_second": images / seconds,
        "batches_per_second": num_batches / seconds,
        "seconds": seconds,
        "images": images,
        "config": {
            "image_size": image_size, "source_shape": tuple(source_shape),
            "batch_size": batch_size, "views": tuple(views), "num_images": num_images,
            **{k: v for k, v in dataset_kwargs.items() if k != "tokenizer"},
            "cpu_count": os.cpu_count(),
        },
    }
