"""Stages 1-2 of `image_text_dataset` (paper sec. 2, training data): the checked,
filtered, language-mixed stream of raw (not yet decoded) records, with per-bucket
end-of-epoch markers and each record's position in the run (the resumption key).

Per language bucket: the records of one epoch (order fixed by (seed, epoch)), then an
end-of-epoch marker; cheap checks (`record_checks.check_record`) and `filter_fn`; bad
records counted in the `DataReport` and dropped (or, `strict=True`, raised). The buckets
are mixed with stateless choices (`tf.data.Dataset.choose_from_datasets`)."""

import numpy as np
import tensorflow as tf

from keras_siglip2.training.data.languages import _check_language_weights, language_buckets
from keras_siglip2.training.data.record_checks import _apply_filter, _strict_assert, check_record
from keras_siglip2.training.data.records import _raw_tensors, epoch_seed, graph_fn
from keras_siglip2.training.data.report import CODES, END_OF_EPOCH


class _Buckets:
    """The stream of one language bucket (`bucket_names[b]`)."""

    def __init__(self, source, report, weights, bucket_names, default_language, filter_fn,
                 seed, shuffle, shuffle_buffer, num_epochs, strict, balancing=None):
        self.source = source
        self.report = report
        self.weights = weights
        self.bucket_names = bucket_names
        self.default_language = default_language
        self.filter_fn = filter_fn
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.num_epochs = num_epochs
        self.strict = strict
        self.balancing = balancing
        self.rows = self._bucket_rows()

    def _bucket_rows(self):
        """Table sources know every row's language: each bucket then reads only its own
        rows (bucket 0 also the excluded ones, to count them) instead of all of them."""
        rows = [None] * len(self.bucket_names)
        if self.weights is not None and hasattr(self.source, "row_languages"):
            row_buckets = language_buckets(self.source.row_languages, self.bucket_names,
                                           self.default_language).numpy()
            for b in range(len(self.bucket_names)):
                rows[b] = np.where((row_buckets == b) | ((row_buckets < 0) & (b == 0)))[0]
        return rows

    def bucket_of(self, language):
        if self.weights is None:
            return tf.constant(0)
        return language_buckets(language, self.bucket_names, self.default_language)

    def epoch_stream(self, epoch, rows):
        records = self.source.epoch_records(epoch, seed=self.seed, shuffle=self.shuffle,
                                            shuffle_buffer=self.shuffle_buffer, rows=rows)
        marker = tf.data.Dataset.from_tensors(
            _raw_tensors(status=END_OF_EPOCH, record=epoch, source="end of epoch")
        )
        return records.concatenate(marker)

    def _filtered(self, keep, raw):
        """Runs `filter_fn` on examples that passed the checks; counts its drops."""
        passed, raw = tf.cond(
            keep, lambda: _apply_filter(self.filter_fn, raw), lambda: (tf.constant(False), raw)
        )
        self.report.count(tf.where(tf.logical_and(keep, tf.logical_not(passed)),
                                   CODES["filtered"], 0))
        return tf.logical_and(keep, passed), raw

    def check(self, b, raw):
        """One raw record of bucket `b`: its checks, counts and filter; adds "bucket" and
        "keep"."""
        report = self.report
        marker = tf.equal(raw["status"], END_OF_EPOCH)
        bucket = self.bucket_of(raw["language"])
        mine = tf.logical_or(marker, tf.equal(bucket, b))
        excluded = tf.logical_and(tf.logical_not(marker), bucket < 0)
        if b == 0 and self.weights is not None:  # count exclusions once, in bucket 0
            report.count(tf.where(excluded, CODES["language_excluded"], 0))
        code = tf.cond(
            tf.logical_and(mine, tf.logical_not(marker)),
            lambda: check_record(raw),
            lambda: tf.constant(0, tf.int32),
        )
        deps = [_strict_assert(code, raw)] if self.strict else []
        with tf.control_dependencies(deps):
            code = tf.identity(code)
        report.count(code)
        report.note_bad(code, raw["source"], raw["record"])
        keep = tf.logical_and(tf.logical_and(mine, tf.logical_not(marker)), code == 0)
        if self.filter_fn is not None:
            keep, raw = self._filtered(keep, raw)
        if self.balancing is not None:
            kept = tf.cond(keep, lambda: self.balancing.keep(raw), lambda: tf.constant(False))
            report.count(tf.where(tf.logical_and(keep, tf.logical_not(kept)),
                                  CODES["balanced"], 0))
            keep = kept
        usable = tf.cond(keep, lambda: report.count_usable(b),
                         lambda: tf.identity(report.epoch_usable))
        with tf.control_dependencies([usable]):
            return {**raw, "bucket": tf.constant(b, tf.int32),
                    "keep": tf.logical_or(keep, marker)}

    def close_epoch(self, b, raw):
        """At bucket `b`'s end-of-epoch marker: raises when the epoch had no usable
        example (the run would otherwise loop forever)."""
        marker = tf.equal(raw["status"], END_OF_EPOCH)

        def closed():
            usable = self.report.close_usable_epoch(b)
            message = tf.strings.join([
                "keras_siglip2 data: one whole epoch of ", str(self.source),
                " (language bucket '", self.bucket_names[b],
                "') has no usable example; dropped so far: ", self.report.dropped_string(),
            ])
            check = tf.debugging.Assert(usable > 0, [message])
            with tf.control_dependencies([check]):
                return tf.identity(usable)

        done = tf.cond(marker, closed, lambda: tf.constant(0, tf.int64))
        with tf.control_dependencies([done]):
            return {k: tf.identity(v) for k, v in raw.items()}

    def stream(self, b, num_parallel_calls):
        epochs = (tf.data.Dataset.range(self.num_epochs) if self.num_epochs
                  else tf.data.Dataset.counter())
        stream = epochs.flat_map(graph_fn(lambda epoch: self.epoch_stream(epoch, self.rows[b])))
        stream = stream.map(graph_fn(lambda raw: self.check(b, raw)),
                            num_parallel_calls=num_parallel_calls, deterministic=True)
        # Sequential: after every record of the epoch.
        stream = stream.map(graph_fn(lambda raw: self.close_epoch(b, raw)))
        stream = stream.filter(graph_fn(lambda raw: raw["keep"]))
        return stream.map(graph_fn(lambda raw: {k: v for k, v in raw.items() if k != "keep"}))


def _mixed(streams, weights, bucket_names, seed):
    """The bucket streams mixed with the `weights`, by stateless choices (fixed by
    `seed` alone, not by the TF global seed)."""
    if len(streams) == 1:
        return streams[0]
    logits = tf.math.log(tf.constant([[float(weights[b]) for b in bucket_names]]))

    def choices(block):
        draw = tf.random.stateless_categorical(
            logits, 1024, seed=epoch_seed(seed, block, 4), dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(draw[0])

    return tf.data.Dataset.choose_from_datasets(
        streams, tf.data.Dataset.counter().flat_map(graph_fn(choices)),
        stop_on_empty_dataset=True,
    )


def _numbered(count, raw):
    real = tf.cast(raw["status"] != END_OF_EPOCH, tf.int64)
    return count + real, {**raw, "position": count}


def record_stream(source, report, *, language_weights=None, default_language="",
                  filter_fn=None, seed=0, shuffle=True, shuffle_buffer=10_000,
                  num_epochs=None, strict=False, num_parallel_calls=tf.data.AUTOTUNE,
                  balancing=None):
    """Stages 1-2 of `image_text_dataset` (see the module docstring): the checked,
    filtered, language-mixed raw records of `source` (not decoded), each with its
    "bucket" (index in `report.buckets`) and "position" (count of records before it),
    plus the end-of-epoch markers (status `END_OF_EPOCH`). Bad records are counted in
    `report` (a `DataReport` whose buckets are the keys of `language_weights`, or
    ("all",)). `balancing`: a `balance_stage.BalancingStage` (fitted) run after
    `filter_fn`. Cheap: use it to inspect what a pipeline would read."""
    weights = _check_language_weights(language_weights)
    bucket_names = ("all",) if weights is None else tuple(weights)
    if tuple(report.buckets) != bucket_names:
        raise ValueError(f"`report` has buckets {report.buckets}; expected {bucket_names}.")
    buckets = _Buckets(source, report, weights, bucket_names, default_language.strip().lower(),
                       filter_fn, seed, shuffle, shuffle_buffer, num_epochs, strict,
                       balancing)
    streams = [buckets.stream(b, num_parallel_calls) for b in range(len(bucket_names))]
    stream = _mixed(streams, weights, bucket_names, seed)
    return stream.scan(tf.constant(0, tf.int64), graph_fn(_numbered))
