"""Writers of image-text training data (paper sec. 2): `write_tfrecord_shards`,
`write_webdataset_shards` and `write_csv` turn a list of (image, caption, boxes)
examples into each format the readers (`readers.py`) read, for tests and for users
converting their data."""

import csv
import io
import json
import os
import posixpath
import tarfile

import numpy as np
import tensorflow as tf

from keras_siglip2.checks import check_positive_int
from keras_siglip2.training.data.files import _dirname, _is_url, _join

def _example_fields(example):
    """(image, caption, boxes, box_texts, language) of a dict or tuple example."""
    if isinstance(example, dict):
        image = example.get("image", example.get("images"))
        caption = example.get("caption", example.get("text"))
        boxes, box_texts = example.get("boxes"), example.get("box_texts")
        language = example.get("language")
    elif isinstance(example, (list, tuple)) and 2 <= len(example) <= 5:
        image, caption, *rest = example
        rest = list(rest) + [None] * (3 - len(rest))
        boxes, box_texts, language = rest
    else:
        raise TypeError(
            "Each example must be a dict with 'image' and 'caption' (optional 'boxes', "
            "'box_texts', 'language') or a tuple (image, caption[, boxes[, box_texts[, "
            f"language]]]); got {type(example).__name__}."
        )
    if image is None or caption is None:
        raise ValueError("Each example needs an image and a caption.")
    boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
    if boxes.size and (boxes.ndim != 2 or boxes.shape[-1] != 4):
        raise ValueError(f"`boxes` must have shape (num_boxes, 4); got {boxes.shape}.")
    boxes = boxes.reshape(-1, 4)
    box_texts = [] if box_texts is None else list(box_texts)
    return image, caption, boxes, box_texts, language


def _annotations(example):
    """{"attributes": [...], "proxies": [...]} (M4 annotations) of a dict example, only
    the keys it has."""
    if not isinstance(example, dict):
        return {}
    return {k: [float(v) for v in np.asarray(example[k]).reshape(-1)]
            for k in ("attributes", "proxies") if example.get(k) is not None}


def _text(value):
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _as_bytes(value):
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def encode_image(image, image_format="png"):
    """Encoded bytes of an image: bytes pass through; a uint8 (H, W, 3) array (or PIL
    image) is encoded as PNG (lossless, the default) or JPEG (quality 95)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    from PIL import Image  # lazy: Pillow is needed only to encode image arrays

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            raise ValueError(
                "Images to write must be encoded bytes or uint8 arrays (H, W, 1|3|4); got "
                f"dtype {array.dtype}, shape {array.shape}."
            )
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}.get(image_format.lower())
    if fmt is None:
        raise ValueError(f"`image_format` must be 'png' or 'jpeg'; got {image_format!r}.")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _image_extension(data):
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"GIF8":
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def _shard_names(path, num_shards, extension):
    check_positive_int("num_shards", num_shards)
    path = os.fspath(path)
    if path.endswith(extension):
        path = path[: -len(extension)]
    folder = posixpath.dirname(path) if _is_url(path) else os.path.dirname(path)
    if folder:
        tf.io.gfile.makedirs(folder)
    return [f"{path}-{i:05d}-of-{num_shards:05d}{extension}" for i in range(num_shards)]


def _split(examples, num_shards):
    examples = list(examples)
    # Contiguous shards: example i goes to shard i * num_shards // len.
    bounds = [len(examples) * i // num_shards for i in range(num_shards + 1)]
    return [examples[bounds[i] : bounds[i + 1]] for i in range(num_shards)]


def write_tfrecord_shards(path, examples, num_shards=1, image_format="png"):
    """Writes examples (dicts or (image, caption[, boxes[, box_texts[, language]]])
    tuples) to `num_shards` TFRecord files `PATH-0000i-of-0000n.tfrecord`; returns their
    paths. Images may be uint8 arrays (encoded as `image_format`) or encoded bytes."""
    names = _shard_names(path, num_shards, ".tfrecord")
    for name, shard in zip(names, _split(examples, num_shards)):
        with tf.io.TFRecordWriter(name) as writer:
            for example in shard:
                image, caption, boxes, box_texts, language = _example_fields(example)
                feature = {
                    "image/encoded": _bytes_feature([encode_image(image, image_format)]),
                    "text": _bytes_feature([_as_bytes(caption)]),
                }
                if boxes.size or box_texts:
                    feature["boxes"] = tf.train.Feature(
                        float_list=tf.train.FloatList(value=boxes.reshape(-1).tolist()))
                    feature["box_texts"] = _bytes_feature([_as_bytes(t) for t in box_texts])
                if language is not None:
                    feature["language"] = _bytes_feature([_as_bytes(language)])
                for key, values in _annotations(example).items():
                    feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
                proto = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(proto.SerializeToString())
    return names


def _bytes_feature(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def write_webdataset_shards(path, examples, num_shards=1, image_format="png"):
    """Writes examples to `num_shards` WebDataset `.tar` shards (`KEY.png`/`KEY.jpg`,
    `KEY.txt` with the caption, and `KEY.json` with boxes / box_texts / language when
    the example has them); returns their paths."""
    names = _shard_names(path, num_shards, ".tar")
    count = 0
    for name, shard in zip(names, _split(examples, num_shards)):
        with tf.io.gfile.GFile(name, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
            for example in shard:
                image, caption, boxes, box_texts, language = _example_fields(example)
                data = encode_image(image, image_format)
                key = f"{count:09d}"
                count += 1
                members = {_image_extension(data): data, "txt": _as_bytes(caption)}
                annotations = _annotations(example)
                if boxes.size or box_texts or language is not None or annotations:
                    meta = {"boxes": boxes.tolist(), "box_texts": [_text(t) for t in box_texts],
                            **annotations}
                    if language is not None:
                        meta["language"] = _text(language)
                    members["json"] = json.dumps(meta).encode()
                for ext, payload in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return names


def write_csv(path, examples, image_dir=None, image_format="png"):
    """Writes each example's image to `image_dir` (default: an `images` folder beside
    `path`) and a CSV or, for a `.jsonl` path, JSONL rows whose image paths are relative
    to the file. Returns `path`.

    CSV columns: `image_path`, `caption`, then, when any example has them, `language`,
    `boxes` and `box_texts` (each a JSON array in the cell: `[[ymin, xmin, ymax,
    xmax], ...]` and `["box caption", ...]`) and the M4 annotations `attributes` /
    `proxies` (JSON arrays of 0/1); JSONL rows carry the same keys."""
    path = os.fspath(path)
    folder = _dirname(path)
    image_dir = _join(folder, "images") if image_dir is None else os.fspath(image_dir)
    tf.io.gfile.makedirs(image_dir)
    rows = []
    for i, example in enumerate(examples):
        image, caption, boxes, box_texts, language = _example_fields(example)
        data = encode_image(image, image_format)
        image_path = _join(image_dir, f"{i:09d}.{_image_extension(data)}")
        with tf.io.gfile.GFile(image_path, "wb") as f:
            f.write(data)
        obj = {"image_path": image_path if _is_url(image_path)
               else os.path.relpath(image_path, folder), "caption": _text(caption)}
        if boxes.size or box_texts:
            obj["boxes"] = boxes.tolist()
            obj["box_texts"] = [_text(t) for t in box_texts]
        if language is not None:
            obj["language"] = _text(language)
        rows.append({**obj, **_annotations(example)})
    text = _jsonl_text(rows) if path.lower().endswith(".jsonl") else _csv_text(rows)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(text.encode("utf-8", "surrogateescape"))
    return path


def _jsonl_text(rows):
    return "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in rows)


def _csv_text(rows):
    columns = ["image_path", "caption"] + [
        c for c in ("language", "boxes", "box_texts", "attributes", "proxies")
        if any(c in r for r in rows)]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for obj in rows:
        writer.writerow([obj.get(c, "") if c in ("image_path", "caption", "language")
                         else (json.dumps(obj[c], ensure_ascii=False) if c in obj else "")
                         for c in columns])
    return buffer.getvalue()
