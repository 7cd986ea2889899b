"""Bookkeeping of skipped and filtered examples for the image-text pipelines (paper
sec. 2, training data): WebLI-scale data always holds some broken records, and the
de-biasing filters and the language mixture drop examples on purpose. A long run must
neither crash on one bad record nor hide how much data it lost, so every example that
does not reach the model is counted here under one reason, and a summary is printed at
the end of every epoch.

The counters are `tf.Variable`s updated inside the `tf.data` graph, so they are exact
even with parallel decoding; read them from Python at any time with
`DataReport.as_dict()` / `summary()`. Counts run a little ahead of what the model has
consumed (prefetching). A `DataReport` is a `tf.Module`: put it in the same
`tf.train.Checkpoint` as the data iterator to keep the counts across a restart.
"""

import collections
import logging
import sys

import tensorflow as tf

logger = logging.getLogger("keras_siglip2.data")

# Reason codes. 0 means "keep". The status of an example is its first problem found.
Reason = collections.namedtuple("Reason", ["code", "name", "bad", "description"])
REASONS = (
    Reason(1, "missing_shard", True, "a listed shard file does not exist"),
    Reason(2, "truncated_shard", True, "a shard ends in the middle of a record; the rest "
           "of that shard is lost"),
    Reason(3, "unreadable_record", True, "a record that is not a valid tf.train.Example, "
           "JSON object or CSV row"),
    Reason(4, "missing_image", True, "the record holds no image"),
    Reason(5, "missing_image_file", True, "the image file named by the row does not exist"),
    Reason(6, "corrupt_image", True, "the image bytes are not a complete JPEG / PNG / GIF / "
           "BMP / WebP file (e.g. truncated)"),
    Reason(7, "undecodable_image", True, "the image could not be decoded"),
    Reason(8, "image_too_small", True, "the decoded image has fewer than 2 pixels per side"),
    Reason(9, "empty_caption", True, "the caption is empty or only whitespace"),
    Reason(10, "non_utf8_caption", True, "the caption is not valid UTF-8"),
    Reason(11, "bad_boxes", True, "boxes are not 4 finite numbers in [0, 1] with "
           "ymin <= ymax and xmin <= xmax, or their count differs from box_texts"),
    Reason(12, "filtered", False, "dropped by `filter_fn` (e.g. a de-biasing filter)"),
    Reason(13, "language_excluded", False, "language not in `language_weights`"),
    Reason(14, "balanced", False, "dropped by the M4 data balancer (`balancing=`)"),
)
NUM_CODES = len(REASONS) + 1
CODES = {r.name: r.code for r in REASONS}
# Internal marker codes (never counted): the end-of-epoch marker and an end-of-shard
# marker that carries no example.
END_OF_EPOCH = 100
END_OF_SHARD = 101


def reason_names():
    """A string tensor mapping code -> reason name ("ok" for 0)."""
    return tf.constant(["ok"] + [r.name for r in REASONS])


class DataReport(tf.Module):
    """Counts of the examples an image-text pipeline delivered, skipped and filtered.

    Attributes (tf.Variables, read with `.numpy()` or through `as_dict()`):
        counts: int64 (NUM_CODES,), examples dropped per reason code (`REASONS`).
        delivered: int64, examples handed to batching.
        epochs: int64 (num_buckets,), completed epochs per language bucket (one bucket,
            "all", without a language mixture).
        epoch_usable: int64 (num_buckets,), examples of the current epoch of each bucket
            that passed the checks before decoding (an epoch with none raises: it would
            otherwise loop forever).
        first_bad: string (NUM_CODES,), "SOURCE record N" of the first example dropped
            under each reason ("" for none), so that a skipped bad record (e.g. boxes
            outside [0, 1]) is named, not only counted.
        with_regions: int64, delivered examples with at least one region (a box with
            a non-empty box caption): the LocCa ARef / GCap tasks train on these.
    """

    def __init__(self, buckets=("all",), name="data_report"):
        super().__init__(name=name)
        self.buckets = tuple(buckets)
        with tf.init_scope():
            self.counts = tf.Variable(tf.zeros([NUM_CODES], tf.int64), trainable=False)
            self.delivered = tf.Variable(tf.constant(0, tf.int64), trainable=False)
            self.epochs = tf.Variable(tf.zeros([len(self.buckets)], tf.int64), trainable=False)
            self.epoch_usable = tf.Variable(
                tf.zeros([len(self.buckets)], tf.int64), trainable=False
            )
            self.first_bad = tf.Variable(tf.fill([NUM_CODES], ""), trainable=False)
            self.with_regions = tf.Variable(tf.constant(0, tf.int64), trainable=False)

    # ----------------------------------------------------------------- graph side
    def count(self, code):
        """Adds one example under `code` (a scalar int32 tensor; 0 counts nothing)."""
        return self.counts.assign_add(tf.one_hot(code, NUM_CODES, dtype=tf.int64) * tf.cast(
            code > 0, tf.int64))

    def count_delivered(self):
        return self.delivered.assign_add(1)

    def note_bad(self, code, source, record):
        """Records "SOURCE record N" for reason `code` if it is the first of its reason
        (a scalar int32 tensor; 0 notes nothing); returns the op."""
        name = tf.strings.join([source, " record ", tf.strings.as_string(record)])
        first = tf.logical_and(code > 0, tf.equal(self.first_bad[code], ""))

        def noted():
            with tf.control_dependencies([self.first_bad.scatter_nd_update([[code]], [name])]):
                return tf.constant(True)

        return tf.cond(first, noted, lambda: tf.constant(False))

    def count_regions(self, has_region):
        """Counts one delivered example with a region when `has_region` (scalar bool)."""
        return self.with_regions.assign_add(tf.cast(has_region, tf.int64))

    def count_usable(self, bucket):
        return self.epoch_usable.assign_add(tf.one_hot(bucket, len(self.buckets), dtype=tf.int64))

    def close_usable_epoch(self, bucket):
        """Resets the bucket's usable count; returns its value before the reset."""
        usable = tf.identity(self.epoch_usable[bucket])
        with tf.control_dependencies([usable]):
            reset = self.epoch_usable.scatter_nd_update([[bucket]], tf.zeros([1], tf.int64))
        with tf.control_dependencies([reset]):
            return tf.identity(usable)

    def dropped_string(self):
        """"name=n, ..." of every reason with a non-zero count, or "none" (graph op)."""
        names = reason_names()
        nonzero = self.counts[1:] > 0
        parts = tf.boolean_mask(names[1:] + "=" + tf.strings.as_string(self.counts[1:]), nonzero)
        return tf.cond(tf.size(parts) > 0, lambda: tf.strings.reduce_join(parts, separator=", "),
                       lambda: tf.constant("none"))

    def end_epoch(self, bucket):
        """Graph op run by the end-of-epoch marker of `bucket`: counts the epoch, prints
        the summary so far to stderr and returns the bucket's epoch count."""
        update = self.epochs.assign_add(tf.one_hot(bucket, len(self.buckets), dtype=tf.int64))
        with tf.control_dependencies([update]):
            message = tf.strings.join([
                "keras_siglip2 data: epoch ", tf.strings.as_string(self.epochs[bucket]),
                " of ", tf.constant(self.buckets)[bucket], " done; ",
                tf.strings.as_string(self.delivered), " examples delivered so far; dropped: ",
                self.dropped_string(),
            ])
            printed = tf.print(message, output_stream=sys.stderr)
        with tf.control_dependencies([printed]):
            return tf.identity(self.epochs[bucket])

    def add(self, name, n=1):
        """Eagerly adds `n` examples under reason `name` (e.g. a missing shard found
        while building the pipeline)."""
        self.counts.assign_add(tf.one_hot(CODES[name], NUM_CODES, dtype=tf.int64) * n)

    # ----------------------------------------------------------------- Python side
    def as_dict(self):
        """`{"delivered": n, "skipped": {reason: n}, "filtered": {reason: n},
        "epochs": {bucket: n}}` (only reasons with a non-zero count)."""
        counts = self.counts.numpy()
        out = {"delivered": int(self.delivered.numpy()), "skipped": {}, "filtered": {}}
        for reason in REASONS:
            if counts[reason.code]:
                out["skipped" if reason.bad else "filtered"][reason.name] = int(counts[reason.code])
        out["epochs"] = dict(zip(self.buckets, (int(x) for x in self.epochs.numpy())))
        first = self.first_bad.numpy()
        out["first_bad"] = {r.name: first[r.code].decode("utf-8", "replace")
                            for r in REASONS if counts[r.code] and first[r.code]}
        out["with_regions"] = int(self.with_regions.numpy())
        return out

    @property
    def num_skipped(self):
        """Examples dropped as bad input (not counting filter / language drops)."""
        return sum(self.as_dict()["skipped"].values())

    def summary(self):
        """One human-readable paragraph: delivered, skipped (by reason), filtered."""
        d = self.as_dict()
        lines = [f"{d['delivered']} examples delivered; epochs completed: "
                 + ", ".join(f"{k}={v}" for k, v in d["epochs"].items())]
        for key in ("skipped", "filtered"):
            if d[key]:
                parts = ", ".join(
                    f"{n} {name}" + (f" (first: {d['first_bad'][name]})"
                                     if name in d["first_bad"] else "")
                    for name, n in sorted(d[key].items()))
                lines.append(f"{sum(d[key].values())} {key}: {parts}")
            else:
                lines.append(f"0 {key}")
        return "; ".join(lines)

    def log_summary(self, log=None):
        (log or logger).info("keras_siglip2 data: %s", self.summary())

    def __repr__(self):
        return f"DataReport({self.summary()})"
