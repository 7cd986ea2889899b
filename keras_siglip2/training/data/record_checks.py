"""Checks of raw records before decoding, and the user filter step (stage 1 of
`image_text_dataset`; paper sec. 2, training data: broken records are skipped and
counted, and de-biasing filters drop or rewrite examples on purpose). Everything is a
`tf` op in the `tf.data` graph."""

import tensorflow as tf

from keras_siglip2.training.data import augment
from keras_siglip2.training.data.records import RAW_SPEC
from keras_siglip2.training.data.report import CODES, REASONS, reason_names

_DESCRIPTIONS = ["ok"] + [r.description for r in REASONS]


def _first_problem(*pairs):
    """The code of the first (condition, code) pair whose condition holds, else 0."""
    code = tf.constant(0, tf.int32)
    for condition, value in reversed(pairs):
        code = tf.where(condition, tf.cast(value, tf.int32), code)
    return code


def _path_exists(path):
    """False only when `path` surely does not exist (glob characters: assume it does)."""
    has_glob = tf.strings.regex_full_match(path, r".*[\*\?\[].*")
    return tf.logical_or(has_glob, tf.size(tf.io.matching_files(
        tf.where(has_glob, "", path))) > 0)


def check_record(raw):
    """The reason code (0 = fine) of a raw record, from checks that need no decoding."""
    text = raw["text"]
    valid_utf8 = tf.equal(
        tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace"), text
    )
    boxes = raw["boxes"]
    n = tf.shape(boxes)[0]
    boxes_ok = tf.reduce_all(
        tf.concat(
            [
                tf.reshape(tf.math.is_finite(boxes), [-1]),
                tf.reshape(boxes >= 0.0, [-1]),
                tf.reshape(boxes <= 1.0, [-1]),
                boxes[:, 0] <= boxes[:, 2],
                boxes[:, 1] <= boxes[:, 3],
                [tf.logical_or(tf.size(raw["box_texts"]) == 0, tf.size(raw["box_texts"]) == n)],
            ],
            axis=0,
        )
    )
    has_bytes = tf.strings.length(raw["image"]) > 0
    has_path = tf.strings.length(raw["image_path"]) > 0
    image_status = tf.cond(
        has_bytes, lambda: augment.image_integrity_status(raw["image"]), lambda: tf.constant(0)
    )
    file_missing = tf.cond(
        tf.logical_and(has_path, tf.logical_not(has_bytes)),
        lambda: tf.logical_not(_path_exists(raw["image_path"])),
        lambda: tf.constant(False),
    )
    problem = _first_problem(
        (tf.logical_and(tf.logical_not(has_bytes), tf.logical_not(has_path)),
         CODES["missing_image"]),
        (file_missing, CODES["missing_image_file"]),
        (tf.logical_not(valid_utf8), CODES["non_utf8_caption"]),
        (tf.equal(tf.strings.length(tf.strings.strip(text)), 0), CODES["empty_caption"]),
        (tf.logical_not(boxes_ok), CODES["bad_boxes"]),
        (image_status != 0, image_status),
    )
    # A problem found while reading (unparsable record, truncated shard) comes first.
    return tf.where(raw["status"] != 0, raw["status"], problem)


def _strict_assert(code, raw):
    """Raises (InvalidArgumentError from the iterator) naming the shard, the record and
    the reason when `code` is not 0."""
    message = tf.strings.join([
        "keras_siglip2 data (strict=True): bad example in ", raw["source"], " record ",
        tf.strings.as_string(raw["record"]), ": ", tf.gather(reason_names(), code), " (",
        tf.gather(tf.constant(_DESCRIPTIONS), code), "). Pass strict=False to skip and count "
        "bad examples instead.",
    ])
    return tf.debugging.Assert(tf.equal(code, 0), [message])


FILTER_KEYS = ("text", "language", "boxes", "box_texts")


def _apply_filter(filter_fn, raw):
    """Runs `filter_fn` on the filterable fields of `raw`; returns (keep, raw)."""
    example = {k: raw[k] for k in FILTER_KEYS + ("source", "record")}
    out = filter_fn(example)
    if isinstance(out, tuple) and len(out) == 2:
        keep, new = out
    elif isinstance(out, dict):
        keep, new = True, out
    else:
        keep, new = out, {}
    if not isinstance(new, dict):
        raise TypeError(
            "`filter_fn` must return a bool tensor (keep the example?), a dict of rewritten "
            f"fields, or (keep, dict); got a {type(new).__name__} as the dict part."
        )
    unknown = sorted(set(new) - set(example))
    read_only = sorted(set(new) & {"source", "record"})
    if unknown or read_only:
        raise ValueError(
            f"`filter_fn` may rewrite only {FILTER_KEYS}; it returned keys "
            f"{unknown + read_only}."
        )
    keep = tf.convert_to_tensor(keep)
    if keep.dtype != tf.bool or keep.shape.rank not in (0, None):
        raise TypeError(
            "`filter_fn` must return a scalar bool tensor as its keep decision; got "
            f"dtype {keep.dtype.name}, shape {keep.shape}."
        )
    raw = dict(raw)
    for key, value in new.items():
        spec = RAW_SPEC[key]
        raw[key] = tf.ensure_shape(tf.cast(value, spec.dtype) if spec.dtype != tf.string
                                   else tf.convert_to_tensor(value, tf.string), spec.shape)
    return keep, raw
