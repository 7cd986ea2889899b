"""`image_text_dataset`: the `tf.data` input pipeline of the SigLIP 2 recipe (paper
sec. 2) for a user's own image-text data.

From TFRecord / WebDataset / CSV / JSONL sources (`sources.py`) it builds the batches
`SigLIP2Pretrainer` trains on: the image at the model resolution and the caption's
token ids (sigmoid loss, sec. 2.1), LocCa targets from captions and boxes (sec. 2.2),
SILC local crops and the TIPS patch mask (sec. 2.3), or NaFlex patches with a sequence
length drawn per batch from {128, 256, 576, 784, 1024} (sec. 2.4.2). It also offers the
paper's data-side choices (sec. 2, "training data"): a language mixture (90 % English /
10 % other languages in the paper) and a pluggable de-biasing filter step.

Order of the stages (every stage runs in the `tf.data` graph):

1. per language bucket: records of one epoch (shards in a permuted order, records
   shuffled in a buffer, both seeded by (seed, epoch)), then an end-of-epoch marker;
   cheap checks (caption empty / not UTF-8, boxes, truncated or unknown image bytes,
   missing image file), `filter_fn`; bad examples are counted in `DataReport` and
   dropped (or, `strict=True`, raise naming the shard and record);
2. the language mixture (`tf.data.Dataset.choose_from_datasets`, stateless choices);
3. resumption: the first `start_batch * batch_size` examples are skipped before decoding;
4. decoding and the views, in parallel, order kept; an image that fails to decode is
   counted and dropped like the others; the end-of-epoch marker prints the report;
5. NaFlex patchification with the batch's sequence length, batching, tokenization,
   LocCa targets, prefetch.

Determinism and resumption. The order of examples, the crops and the masks are a
function of `seed` (and of the data), so two runs with the same arguments give the same
batches. A run resumes in one of two ways:
- `start_batch=n`: the dataset starts with the (n + 1)-th batch of the run with the same
  arguments; `n` is simply the number of batches already trained on (e.g. the
  optimizer's `iterations`, times gradient-accumulation steps). Skipped examples are
  read but not decoded. This is exact unless an image that passed the byte-level checks
  failed to decode earlier in the stream (counted as `undecodable_image`): each such
  image before the resume point makes the resumed run repeat one example.
- `tf.train.Checkpoint(iterator=iterator, report=dataset.report)`: saves the exact
  position (and the shuffle buffers) of an iterator; works for TFRecord and CSV / JSONL
  sources (not `.tar` shards, which are read by Python).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_siglip2.training.data import augment
from keras_siglip2.training.data.report import (
    CODES,
    END_OF_EPOCH,
    REASONS,
    DataReport,
    reason_names,
)
from keras_siglip2.training.data.sources import (
    RAW_SPEC,
    _raw_tensors,
    epoch_seed,
    graph_fn,
    open_source,
    protected_map,
)

PAPER_LANGUAGE_WEIGHTS = {"en": 0.9, "other": 0.1}
NAFLEX_SEQUENCE_LENGTHS = (128, 256, 576, 784, 1024)
VIEWS = ("image", "local", "masked", "naflex")
EXTRA_FIELDS = ("texts", "boxes", "box_texts", "language", "source", "record")
_DESCRIPTIONS = ["ok"] + [r.description for r in REASONS]


def default_host():
    """(num_hosts, host_index): `jax.process_count()` / `jax.process_index()` on the
    JAX backend, else (1, 0)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_count(), jax.process_index()
    return 1, 0


# --------------------------------------------------------------------------- arguments
def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {name}={value!r}.")
    return int(value)


def _check_views(views):
    if isinstance(views, str):
        views = (views,)
    views = tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ValueError(f"`views` must be a non-empty subset of {VIEWS}; got views={views!r}.")
    if "naflex" in views and ("local" in views or "masked" in views):
        raise ValueError(
            "NaFlex training (paper sec. 2.4.2) uses no SILC / TIPS views: `views` cannot "
            f"combine 'naflex' with 'local' or 'masked'; got views={views!r}."
        )
    return views


def _check_language_weights(weights):
    if weights is None:
        return None
    if not isinstance(weights, dict) or not weights:
        raise ValueError(
            "`language_weights` must be a non-empty dict {language: weight}, e.g. "
            f"{PAPER_LANGUAGE_WEIGHTS} (the paper's mixture); got {weights!r}."
        )
    out = {}
    for key, value in weights.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"`language_weights` keys must be language codes; got {key!r}.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0
        ):
            raise ValueError(
                f"`language_weights[{key!r}]` must be a positive finite number; got {value!r}."
            )
        out[key.strip().lower()] = float(value)
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


def _normalize_language(language, default_language):
    """Lowercased primary subtag ("en-US" -> "en"); empty -> `default_language`.
    Element-wise on a string tensor of any shape."""
    language = tf.strings.lower(tf.strings.strip(language))
    language = tf.strings.regex_replace(language, "[-_].*", "")
    return tf.where(tf.strings.length(language) > 0, language, default_language)


def language_buckets(languages, bucket_names, default_language=""):
    """Bucket index (in `bucket_names`, the keys of `language_weights`) of each
    language in a string tensor: its own bucket, else "other", else -1 (excluded)."""
    explicit = [b for b in bucket_names if b != "other"]
    other = bucket_names.index("other") if "other" in bucket_names else -1
    language = _normalize_language(languages, tf.constant(default_language))
    if not explicit:
        return tf.fill(tf.shape(language), other)
    equal = tf.equal(language[..., None], tf.constant(explicit))
    index = tf.gather(tf.constant([bucket_names.index(b) for b in explicit]),
                      tf.argmax(tf.cast(equal, tf.int32), axis=-1))
    return tf.where(tf.reduce_any(equal, axis=-1), index, other)


# --------------------------------------------------------------------------- checks
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


# --------------------------------------------------------------------------- views
class _Views:
    """Decodes one record and computes the requested views (stage 4)."""

    def __init__(self, views, converter, local_converter, num_local_crops, local_crop_scale,
                 num_patches, mask_ratio, seed, naflex):
        self.views = views
        self.converter = converter
        self.local_converter = local_converter
        self.num_local_crops = num_local_crops
        self.local_crop_scale = local_crop_scale
        self.num_patches = num_patches
        self.mask_ratio = mask_ratio
        self.seed = seed
        self.naflex = naflex

    def _outputs(self, raw, image, status, position, compute=True):
        """The element after decoding; `compute=False` (a failed decode) fills the views
        with zeros of the right shapes without computing them."""
        out = {k: raw[k] for k in ("text", "boxes", "box_texts", "language", "source",
                                   "record", "bucket")}
        out["status"] = tf.where(raw["status"] == END_OF_EPOCH, END_OF_EPOCH, status)
        seed = augment.fold_seed(tf.stack([tf.cast(self.seed, tf.int64), 0]), position)
        if self.naflex:
            out["image_uint8"] = image
        elif "image" in self.views:
            shape = self.converter.image_size + (3,)
            out["images"] = tf.ensure_shape(
                tf.cast(self.converter(image), tf.float32), shape
            ) if compute else tf.zeros(shape, tf.float32)
        if "local" in self.views:
            size = tuple(self.local_converter.image_size)
            if compute:
                crops = augment.local_crops(image, augment.fold_seed(seed, 1),
                                            self.num_local_crops, size, self.local_crop_scale)
                # The converter's [0, 255] -> [-1, 1] map (its resize is not needed).
                crops = crops * self.local_converter.scale + self.local_converter.offset
            else:
                crops = tf.zeros((self.num_local_crops,) + size + (3,), tf.float32)
            out["local_images"] = tf.cast(crops, tf.float32)
        if "masked" in self.views:
            out["tips_mask"] = augment.tips_mask(
                augment.fold_seed(seed, 2), self.num_patches, self.mask_ratio
            ) if compute else tf.zeros([self.num_patches], tf.int32)
        return out

    def decode(self, raw):
        from_path = tf.strings.length(raw["image"]) == 0
        data = tf.cond(
            tf.logical_and(from_path, tf.strings.length(raw["image_path"]) > 0),
            lambda: tf.io.read_file(raw["image_path"]),
            lambda: raw["image"],
        )
        status = augment.image_integrity_status(data)
        image = tf.cond(
            status == 0,
            lambda: augment.decode_image(data),
            lambda: tf.zeros([2, 2, 3], tf.uint8),
        )
        shape = tf.shape(image)
        too_small = tf.logical_or(shape[0] < 2, shape[1] < 2)
        status = tf.where(tf.logical_and(status == 0, too_small), CODES["image_too_small"], status)
        image = tf.cond(too_small, lambda: tf.zeros([2, 2, 3], tf.uint8), lambda: image)
        return self._outputs(raw, image, tf.cast(status, tf.int32), raw["position"])

    def failed(self, raw):
        path = raw["image_path"]
        missing = tf.logical_and(
            tf.logical_and(tf.strings.length(raw["image"]) == 0, tf.strings.length(path) > 0),
            tf.logical_not(_path_exists(path)),
        )
        status = tf.where(missing, CODES["missing_image_file"], CODES["undecodable_image"])
        return self._outputs(raw, tf.zeros([2, 2, 3], tf.uint8), tf.cast(status, tf.int32),
                             raw["position"], compute=False)


def record_stream(source, report, *, language_weights=None, default_language="",
                  filter_fn=None, seed=0, shuffle=True, shuffle_buffer=10_000,
                  num_epochs=None, strict=False, num_parallel_calls=tf.data.AUTOTUNE):
    """Stages 1-2 of `image_text_dataset` (see the module docstring): the checked,
    filtered, language-mixed raw records of `source` (not decoded), each with its
    "bucket" (index in `report.buckets`) and "position" (count of records before it),
    plus the end-of-epoch markers (status `END_OF_EPOCH`). Bad records are counted in
    `report` (a `DataReport` whose buckets are the keys of `language_weights`, or
    ("all",)). Cheap: use it to inspect what a pipeline would read."""
    weights = _check_language_weights(language_weights)
    bucket_names = ("all",) if weights is None else tuple(weights)
    if tuple(report.buckets) != bucket_names:
        raise ValueError(f"`report` has buckets {report.buckets}; expected {bucket_names}.")
    default_language = default_language.strip().lower()
    def bucket_of(language):
        if weights is None:
            return tf.constant(0)
        return language_buckets(language, bucket_names, default_language)

    # Table sources know every row's language: each bucket then reads only its own
    # rows (bucket 0 also the excluded ones, to count them) instead of all of them.
    bucket_rows = [None] * len(bucket_names)
    if weights is not None and hasattr(source, "row_languages"):
        row_buckets = language_buckets(source.row_languages, bucket_names,
                                       default_language).numpy()
        for b in range(len(bucket_names)):
            bucket_rows[b] = np.where((row_buckets == b) | ((row_buckets < 0) & (b == 0)))[0]

    def epoch_stream(epoch, rows):
        records = source.epoch_records(epoch, seed=seed, shuffle=shuffle,
                                       shuffle_buffer=shuffle_buffer, rows=rows)
        marker = tf.data.Dataset.from_tensors(
            _raw_tensors(status=END_OF_EPOCH, record=epoch, source="end of epoch")
        )
        return records.concatenate(marker)

    def bucket_stream(b):
        epochs = tf.data.Dataset.range(num_epochs) if num_epochs else tf.data.Dataset.counter()
        stream = epochs.flat_map(graph_fn(lambda epoch: epoch_stream(epoch, bucket_rows[b])))

        def check(raw):
            marker = tf.equal(raw["status"], END_OF_EPOCH)
            bucket = bucket_of(raw["language"])
            mine = tf.logical_or(marker, tf.equal(bucket, b))
            excluded = tf.logical_and(tf.logical_not(marker), bucket < 0)
            if b == 0 and weights is not None:  # count exclusions once, in bucket 0
                report.count(tf.where(excluded, CODES["language_excluded"], 0))
            code = tf.cond(
                tf.logical_and(mine, tf.logical_not(marker)),
                lambda: check_record(raw),
                lambda: tf.constant(0, tf.int32),
            )
            deps = [_strict_assert(code, raw)] if strict else []
            with tf.control_dependencies(deps):
                code = tf.identity(code)
            report.count(code)
            keep = tf.logical_and(tf.logical_and(mine, tf.logical_not(marker)), code == 0)
            if filter_fn is not None:
                # Only examples that passed the checks reach the filter.
                passed, raw = tf.cond(
                    keep, lambda: _apply_filter(filter_fn, raw), lambda: (tf.constant(False), raw)
                )
                report.count(tf.where(tf.logical_and(keep, tf.logical_not(passed)),
                                      CODES["filtered"], 0))
                keep = tf.logical_and(keep, passed)
            usable = tf.cond(keep, lambda: report.count_usable(b),
                             lambda: tf.identity(report.epoch_usable))
            with tf.control_dependencies([usable]):
                return {**raw, "bucket": tf.constant(b, tf.int32),
                        "keep": tf.logical_or(keep, marker)}

        def close_epoch(raw):
            marker = tf.equal(raw["status"], END_OF_EPOCH)

            def closed():
                usable = report.close_usable_epoch(b)
                message = tf.strings.join([
                    "keras_siglip2 data: one whole epoch of ", str(source), " (language bucket '",
                    bucket_names[b], "') has no usable example; dropped so far: ",
                    report.dropped_string(),
                ])
                check = tf.debugging.Assert(usable > 0, [message])
                with tf.control_dependencies([check]):
                    return tf.identity(usable)

            done = tf.cond(marker, closed, lambda: tf.constant(0, tf.int64))
            with tf.control_dependencies([done]):
                return {k: tf.identity(v) for k, v in raw.items()}

        stream = stream.map(graph_fn(check), num_parallel_calls=num_parallel_calls, deterministic=True)
        stream = stream.map(graph_fn(close_epoch))  # sequential: after every record of the epoch
        stream = stream.filter(graph_fn(lambda raw: raw["keep"]))
        return stream.map(graph_fn(lambda raw: {k: v for k, v in raw.items() if k != "keep"}))

    streams = [bucket_stream(b) for b in range(len(bucket_names))]
    if len(streams) == 1:
        stream = streams[0]
    else:
        # Stateless choices (fixed by `seed` alone, not by the TF global seed).
        logits = tf.math.log(tf.constant([[float(weights[b]) for b in bucket_names]]))

        def choices(block):
            draw = tf.random.stateless_categorical(
                logits, 1024, seed=epoch_seed(seed, block, 4), dtype=tf.int64)
            return tf.data.Dataset.from_tensor_slices(draw[0])

        stream = tf.data.Dataset.choose_from_datasets(
            streams, tf.data.Dataset.counter().flat_map(graph_fn(choices)),
            stop_on_empty_dataset=True,
        )

    # ---- positions and resumption
    def number(count, raw):
        real = tf.cast(raw["status"] != END_OF_EPOCH, tf.int64)
        return count + real, {**raw, "position": count}

    stream = stream.scan(tf.constant(0, tf.int64), graph_fn(number))
    return stream


# --------------------------------------------------------------------------- LocCa
LOCCA_OPTIONS = ("num_bins", "sequence_length", "task_weights")


def locca_batch_fields(batch, tokenizer, seed, num_bins=None, sequence_length=None,
                       task_weights=(1.0, 1.0, 1.0)):
    """The LocCa fields `SigLIP2Pretrainer` reads (paper sec. 2.2), for one batch of
    captions with boxes, as `tf` ops (in a `tf.data` map or eagerly).

    One task per example is drawn, with `task_weights` for captioning / ARef / GCap,
    among those the example allows: ARef and GCap need a box with a box caption, and
    one such box is drawn uniformly; an example without one gets captioning.

    Args:
        batch: dict of batched tensors: "token_ids" (B, L) int (the tokenized
            captions), "boxes" (B, M, 4) float (ymin, xmin, ymax, xmax) in [0, 1],
            "box_texts" (B, M) string (a caption per box, "" for none) and
            "num_boxes" (B,) int (valid boxes per example).
        tokenizer: the `SigLIP2Tokenizer` that made "token_ids" (tokenizes the box
            captions; its vocabulary size offsets the location tokens).
        seed: a stateless seed, shape (2,) int (e.g. `tf.stack([seed, batch_index])`):
            the task and box draws are a function of it.
        num_bins: location bins per coordinate (default
            `locca_targets.DEFAULT_NUM_BINS`); the decoder vocabulary is the
            tokenizer's plus `num_bins`.
        sequence_length: decoder length (default: `make_locca_targets`').
        task_weights: 3 non-negative weights (captioning > 0).

    Returns:
        dict: "decoder_token_ids", "decoder_targets", "decoder_weights",
        "decoder_prefix_mask" (B, sequence_length) (see
        `locca_targets.make_locca_targets`) and "locca_task" (B,) int32 (0 =
        captioning, 1 = ARef, 2 = GCap).
    """
    from keras_siglip2.training.data.locca_targets import DEFAULT_NUM_BINS, make_locca_targets

    num_bins = DEFAULT_NUM_BINS if num_bins is None else num_bins
    weights = [float(w) for w in task_weights]
    if len(weights) != 3 or min(weights) < 0 or weights[0] <= 0:
        raise ValueError(
            "`task_weights` must be 3 non-negative weights (captioning, ARef, GCap) with "
            f"captioning > 0; got {task_weights!r}."
        )
    caption_ids = batch["token_ids"]
    boxes = tf.pad(batch["boxes"], [[0, 0], [0, 1], [0, 0]])  # room for "no box"
    box_texts = tf.pad(batch["box_texts"], [[0, 0], [0, 1]])
    num_boxes = tf.cast(batch["num_boxes"], tf.int32)
    draws = tf.random.stateless_uniform([tf.shape(caption_ids)[0], 2], seed=seed)
    region = tf.minimum(tf.cast(draws[:, 0] * tf.cast(num_boxes, tf.float32), tf.int32),
                        tf.maximum(num_boxes - 1, 0))
    box = tf.gather(boxes, region, batch_dims=1)
    box_text = tf.gather(box_texts, region, batch_dims=1)
    has_region = tf.logical_and(num_boxes > 0, tf.strings.length(tf.strings.strip(box_text)) > 0)
    box = tf.where(has_region[:, None], box, 0.0)
    region_ids = tf.cast(tokenizer(box_text), tf.int32)
    targets = make_locca_targets(
        caption_ids, region_ids, box, tokenizer.vocabulary_size() + num_bins,
        num_bins=num_bins, sequence_length=sequence_length,
    )
    # Task: captioning (0), ARef (1) or GCap (2); without a region only captioning.
    allowed = tf.where(has_region[:, None], tf.constant([weights]),
                       tf.constant([[weights[0], 0.0, 0.0]]))
    cumulative = tf.cumsum(allowed / tf.reduce_sum(allowed, axis=1, keepdims=True), axis=1)
    task = tf.minimum(tf.reduce_sum(tf.cast(draws[:, 1:2] >= cumulative, tf.int32), axis=1), 2)
    names = {"decoder_token_ids": "decoder_input_ids", "decoder_targets": "target_ids",
             "decoder_weights": "loss_weights", "decoder_prefix_mask": "prefix_mask"}
    out = {}
    for field, key in names.items():
        stacked = tf.stack([targets[t][key] for t in ("captioning", "aref", "gcap")], axis=1)
        out[field] = tf.gather(stacked, task, batch_dims=1)
    out["locca_task"] = task
    return out


# --------------------------------------------------------------------------- pipeline
def image_text_dataset(
    path_or_pattern,
    preprocessor=None,
    *,
    batch_size,
    tokenizer=None,
    image_size=None,
    views=("image",),
    num_local_crops=8,
    local_crop_size=None,
    local_crop_scale=(0.05, 0.4),
    mask_ratio=0.5,
    patch_size=None,
    naflex_sequence_lengths=NAFLEX_SEQUENCE_LENGTHS,
    locca=False,
    locca_options=None,
    language_weights=None,
    default_language="",
    filter_fn=None,
    seed=0,
    shuffle=True,
    shuffle_buffer=10_000,
    num_epochs=None,
    num_hosts=None,
    host_index=None,
    start_batch=0,
    strict=False,
    format=None,
    extra_fields=(),
    drop_remainder=True,
    num_parallel_calls=tf.data.AUTOTUNE,
):
    """A `tf.data.Dataset` of training batches (dicts) read from image-text files.

    Args:
        path_or_pattern: TFRecord shards, WebDataset `.tar` shards, or a CSV / JSONL file
            of `image_path,caption` rows (see `sources.py` for the keys): a path, a
            folder, a glob pattern (`gs://bucket/train-*.tfrecord`) or a list of them.
        preprocessor: a `SigLIP2Preprocessor`: its tokenizer gives "token_ids" and its
            image converter the image size (fixed), or NaFlex patches (a
            `SigLIP2NaFlexImageConverter`, whose patch size is used).
        batch_size: int, examples per batch on this host.
        tokenizer: a `SigLIP2Tokenizer` (instead of, or overriding, the preprocessor's).
            Without any tokenizer the raw captions are returned under "texts".
        image_size: int or (height, width), the model resolution (when no preprocessor
            gives it).
        views: any of "image" (the image at the model resolution: "images", or NaFlex
            patches with a NaFlex converter), "local" (SILC local crops:
            "local_images" (B, num_local_crops, h, w, 3)), "masked" (TIPS:
            "tips_mask" (B, N) int32, 1 = masked) and "naflex" (NaFlex patches:
            "pixel_patches", "patch_positions", "patch_mask", with the sequence length
            drawn per batch from `naflex_sequence_lengths`).
        num_local_crops, local_crop_size, local_crop_scale: SILC crops: count (8, as
            SILC), side (default: the model resolution, which the pretrainer expects;
            smaller crops are resized in the train step), area fraction range
            ((0.05, 0.4) as SILC / DINO).
        mask_ratio, patch_size: TIPS mask: fraction of masked patches (0.5 as the
            paper) over the (H / patch_size) x (W / patch_size) patch grid.
        naflex_sequence_lengths: the sequence lengths a NaFlex batch draws from.
        locca: bool, add the LocCa decoder targets
            (`training.data.locca_targets.make_locca_targets`) built from captions and
            boxes; `locca_options`: dict of extra keyword arguments for it.
        language_weights: None (no mixture: every example, in the data's proportions)
            or a dict {language: weight}, e.g. `PAPER_LANGUAGE_WEIGHTS` = {"en": 0.9,
            "other": 0.1}: examples are drawn from per-language streams with these
            probabilities; "other" takes every language not named; languages neither
            named nor covered by "other" are dropped (counted as language_excluded).
            Languages compare by primary subtag ("en-US" is "en").
        default_language: language of records without one (e.g. "en" for an English
            CSV).
        filter_fn: a de-biasing (or any) filter: a function of an example dict of
            scalar tensors ("text", "language", "boxes", "box_texts", "source",
            "record") built from tf ops, returning a scalar bool tensor (keep?), a dict of
            rewritten fields ("text", "language", "boxes", "box_texts") or (keep, dict).
            See `filters.GenderedTermRebalancer`.
        seed: int; order, crops, masks and NaFlex lengths are functions of it.
        shuffle, shuffle_buffer: shuffle shard order, rows and records (buffer of
            encoded records for shard formats; CSV / JSONL rows are fully permuted).
        num_epochs: None (repeat forever) or an int.
        num_hosts, host_index: this host's share of the data (shard files, or records
            when there are fewer files than hosts); default from `jax.process_count()` /
            `jax.process_index()` on JAX, else (1, 0).
        start_batch: int, resume after this many batches (see the module docstring).
        strict: False: bad examples are skipped and counted in `dataset.report`; True:
            the first bad example raises (tf.errors.InvalidArgumentError from the
            iterator, naming the shard, the record and the reason); a missing shard
            raises FileNotFoundError at once.
        format: "tfrecord", "webdataset", "csv", "jsonl" or None (from file names).
        extra_fields: any of `EXTRA_FIELDS` to include ("texts", "boxes" (B, max, 4) +
            "num_boxes", "box_texts", "language", "source", "record"), for inspection.
        drop_remainder: bool, drop a last partial batch (True: every batch has
            `batch_size` examples, as a jitted train step wants).

    Returns:
        a `tf.data.Dataset` of dicts; `dataset.report` is its `DataReport`.
    """
    batch_size = _positive_int("batch_size", batch_size)
    views = _check_views(views)
    num_epochs = _positive_int("num_epochs", num_epochs, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int; got seed={seed!r}.")
    seed = int(seed)
    if isinstance(start_batch, bool) or not isinstance(start_batch, (int, np.integer)) or (
        start_batch < 0
    ):
        raise ValueError(f"`start_batch` must be an int >= 0; got start_batch={start_batch!r}.")
    if isinstance(shuffle_buffer, bool) or not isinstance(shuffle_buffer, (int, np.integer)) or (
        shuffle_buffer < 0
    ):
        raise ValueError(f"`shuffle_buffer` must be an int >= 0; got {shuffle_buffer!r}.")
    extra_fields = tuple(extra_fields)
    bad = [f for f in extra_fields if f not in EXTRA_FIELDS]
    if bad:
        raise ValueError(f"`extra_fields` must be a subset of {EXTRA_FIELDS}; got {bad}.")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"`filter_fn` must be callable or None; got {filter_fn!r}.")
    if num_hosts is None and host_index is None:
        num_hosts, host_index = default_host()
    elif num_hosts is None or host_index is None:
        raise ValueError("Give both `num_hosts` and `host_index`, or neither.")
    weights = _check_language_weights(language_weights)
    if not isinstance(default_language, str):
        raise TypeError(f"`default_language` must be a str; got {default_language!r}.")
    default_language = default_language.strip().lower()

    # ---- preprocessing components
    from keras_siglip2.preprocessing import SigLIP2ImageConverter, SigLIP2NaFlexImageConverter

    converter = None
    if preprocessor is not None:
        tokenizer = preprocessor.tokenizer if tokenizer is None else tokenizer
        converter = preprocessor.image_converter
    naflex = "naflex" in views or isinstance(converter, SigLIP2NaFlexImageConverter)
    if naflex:
        if not isinstance(converter, SigLIP2NaFlexImageConverter):
            converter = SigLIP2NaFlexImageConverter(patch_size=patch_size or 16)
        lengths = tuple(_positive_int("naflex_sequence_lengths", n)
                        for n in naflex_sequence_lengths)
        if not lengths:
            raise ValueError("`naflex_sequence_lengths` must name at least one length.")
        views = tuple(v for v in views if v != "image") + (() if "naflex" in views else ("naflex",))
    else:
        if image_size is not None:
            converter = SigLIP2ImageConverter(image_size=image_size)
        if converter is None or converter.image_size is None:
            raise ValueError(
                "`image_text_dataset` needs the model resolution: pass `image_size=` "
                "(e.g. 224) or a `preprocessor` whose image converter has one."
            )
    local_converter = None
    if "local" in views:
        _positive_int("num_local_crops", num_local_crops)
        size = converter.image_size if local_crop_size is None else local_crop_size
        local_converter = SigLIP2ImageConverter(image_size=size)
        lo, hi = (float(x) for x in local_crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"`local_crop_scale` must be (low, high) with 0 < low <= high "
                             f"<= 1; got {local_crop_scale!r}.")
        local_crop_scale = (lo, hi)
    num_patches = None
    if "masked" in views:
        if patch_size is None:
            raise ValueError("The 'masked' (TIPS) view needs `patch_size=` (the vision "
                             "tower's patch size) to size the mask.")
        patch_size = _positive_int("patch_size", patch_size)
        h, w = converter.image_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"`image_size` {converter.image_size} is not a multiple of "
                             f"`patch_size`={patch_size}.")
        num_patches = (h // patch_size) * (w // patch_size)
        if not 0.0 <= float(mask_ratio) <= 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1]; got {mask_ratio!r}.")
    locca_options = dict(locca_options or {})
    if locca:
        if tokenizer is None:
            raise ValueError("`locca=True` needs a tokenizer (or a preprocessor).")
        unknown = sorted(set(locca_options) - set(LOCCA_OPTIONS))
        if unknown:
            raise ValueError(f"`locca_options` accepts {LOCCA_OPTIONS}; got {unknown}.")
    elif locca_options:
        raise ValueError("`locca_options` given without `locca=True`.")

    # ---- buckets
    bucket_names = ("all",) if weights is None else tuple(weights)
    report = DataReport(bucket_names)
    source = open_source(path_or_pattern, format=format, num_hosts=num_hosts,
                         host_index=host_index, strict=strict, report=report)
    stream = record_stream(
        source, report, language_weights=weights, default_language=default_language,
        filter_fn=filter_fn, seed=seed, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
        num_epochs=num_epochs, strict=strict, num_parallel_calls=num_parallel_calls,
    )
    start = int(start_batch) * batch_size
    if start:
        stream = stream.filter(graph_fn(
            lambda raw: tf.logical_or(raw["status"] == END_OF_EPOCH, raw["position"] >= start)
        ))

    # ---- decoding and views
    views_fn = _Views(views, converter, local_converter, num_local_crops, local_crop_scale,
                      num_patches, mask_ratio, seed, naflex)
    stream = protected_map(stream, views_fn.decode, views_fn.failed,
                           num_parallel_calls=num_parallel_calls, cycle_length=16)

    def after_decode(element):
        status = element["status"]
        marker = tf.equal(status, END_OF_EPOCH)
        code = tf.where(marker, 0, status)
        deps = [_strict_assert(code, element)] if strict else []
        deps.append(report.count(code))
        deps.append(tf.cond(marker, lambda: report.end_epoch(element["bucket"]),
                            lambda: tf.constant(0, tf.int64)))
        ok = tf.logical_and(tf.logical_not(marker), code == 0)
        deps.append(tf.cond(ok, report.count_delivered, lambda: tf.identity(report.delivered)))
        with tf.control_dependencies(deps):
            return {**element, "keep": tf.identity(ok)}

    stream = stream.map(graph_fn(after_decode))  # sequential: the epoch summary sees every example
    stream = stream.filter(graph_fn(lambda e: e["keep"]))

    # ---- per-example outputs
    lengths_t = tf.constant(lengths if naflex else [0], tf.int32)

    def finish(index, element):
        out = {}
        for key in ("images", "local_images", "tips_mask"):
            if key in element:
                out[key] = element[key]
        if naflex:
            batch = index // batch_size
            choice = tf.random.stateless_uniform(
                [], seed=tf.stack([tf.cast(seed, tf.int64) + 104729, batch]),
                maxval=len(lengths), dtype=tf.int32,
            )
            branches = [
                (lambda n=n: converter(element["image_uint8"], max_num_patches=n))
                for n in lengths
            ]
            patches = tf.switch_case(choice, branches)
            out.update({k: patches[k] for k in ("pixel_patches", "patch_positions", "patch_mask")})
            out["sequence_length"] = tf.gather(lengths_t, choice)
        out["texts"] = element["text"]
        if "boxes" in extra_fields or locca:
            out["boxes"] = element["boxes"]
            out["num_boxes"] = tf.shape(element["boxes"])[0]
        if "box_texts" in extra_fields or locca:
            out["box_texts"] = element["box_texts"]
        for key in ("language", "source", "record"):
            if key in extra_fields:
                out[key] = element[key]
        return out

    stream = stream.enumerate(start=start).map(
        graph_fn(finish), num_parallel_calls=num_parallel_calls, deterministic=True
    )
    stream = stream.padded_batch(batch_size, drop_remainder=drop_remainder)

    def batch_outputs(batch_index, batch):
        batch = dict(batch)
        if naflex:
            # One sequence length per batch: all examples carry the same value.
            batch.pop("sequence_length")
        texts = batch["texts"]
        if tokenizer is not None:
            batch["token_ids"] = tf.cast(tokenizer(texts), tf.int32)
        if locca:
            batch.update(locca_batch_fields(batch, tokenizer, tf.stack(
                [tf.cast(seed, tf.int64) + 15485863, batch_index]), **locca_options))
        drop = []
        if tokenizer is not None and "texts" not in extra_fields:
            drop.append("texts")
        if "boxes" not in extra_fields:
            drop += [k for k in ("boxes", "num_boxes") if k in batch]
        if "box_texts" not in extra_fields and "box_texts" in batch:
            drop.append("box_texts")
        for key in drop:
            batch.pop(key)
        return batch

    stream = stream.enumerate(start=int(start_batch)).map(
        graph_fn(batch_outputs), num_parallel_calls=num_parallel_calls, deterministic=True
    )
    stream = stream.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    # The report's counters are state outside the pipeline: a checkpoint of the
    # iterator stores them through `report`, not the iterator.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE
    )
    stream = stream.with_options(options)
    stream.report = report
    stream.source = source
    return stream
