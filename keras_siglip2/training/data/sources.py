"""Readers and writers of image-text training data (paper sec. 2: SigLIP 2 trains on
image-text pairs, with boxes and box captions for the LocCa decoder, sec. 2.2).

Three on-disk formats, all read into the same stream of raw records (`RAW_SPEC`):

- TFRecord shards of `tf.train.Example`s: `image/encoded` (bytes), `text` (bytes),
  optional `boxes` (float list, 4 per box: ymin, xmin, ymax, xmax in [0, 1]),
  `box_texts` (bytes list, one per box) and `language` (bytes, e.g. "en").
- WebDataset-style `.tar` shards: consecutive members sharing a key, `KEY.jpg` (or
  `.jpeg` / `.png` / `.webp` / `.gif` / `.bmp`) with `KEY.txt` (the caption) and/or
  `KEY.json` (`{"caption": ..., "boxes": [[ymin, xmin, ymax, xmax], ...],
  "box_texts": [...], "language": ...}`; `"text"` is accepted for `"caption"`).
- A CSV file with a header naming `image_path` and `caption` (optional `language`), or
  a JSONL file of objects with those keys (optional `boxes`, `box_texts`, `language`);
  image paths are relative to the file's folder unless absolute or a URL.

Paths are local or anything `tf.io.gfile` opens (`gs://...`). A source is given as a
file, a folder (every shard of one format inside it), a glob pattern, or a list of
files. Records are read inside the `tf.data` graph (TFRecord, CSV/JSONL: the whole
pipeline can be checkpointed with `tf.train.Checkpoint(iterator=...)`) except `.tar`
shards, which are unpacked by Python's `tarfile` through `tf.data.Dataset.from_generator`.

Problems found while reading (an unparsable record, a truncated shard, boxes that are
not 4 numbers each) do not raise: the record carries a `status` code
(`report.REASONS`) and the pipeline counts and skips it (or raises with `strict=True`).

The writers (`write_tfrecord_shards`, `write_webdataset_shards`, `write_csv`) turn a
list of (image, caption, boxes) examples into each format, for tests and for users
converting their data.
"""

import csv
import io
import json
import os
import posixpath
import tarfile

import numpy as np
import tensorflow as tf

from keras_siglip2.training.data.report import CODES, END_OF_SHARD

RAW_SPEC = {
    "image": tf.TensorSpec([], tf.string),  # encoded bytes ("" if read from image_path)
    "image_path": tf.TensorSpec([], tf.string),  # file to read the image from, or ""
    "text": tf.TensorSpec([], tf.string),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "box_texts": tf.TensorSpec([None], tf.string),
    "language": tf.TensorSpec([], tf.string),
    "source": tf.TensorSpec([], tf.string),  # shard / file the record came from
    "record": tf.TensorSpec([], tf.int64),  # index in that shard (row number for tables)
    "status": tf.TensorSpec([], tf.int32),  # 0 or a report reason code
}

FORMATS = ("tfrecord", "webdataset", "csv", "jsonl")
_EXTENSIONS = {
    ".tfrecord": "tfrecord", ".tfrecords": "tfrecord", ".tfrec": "tfrecord",
    ".tar": "webdataset", ".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl",
}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
_GLOB_CHARS = "*?["


# ---------------------------------------------------------------------------- helpers
def _is_url(path):
    return "://" in path


def _join(folder, name):
    if _is_url(name) or os.path.isabs(name):
        return name
    if _is_url(folder):
        return posixpath.join(folder, name)
    return os.path.join(folder, name)


def _dirname(path):
    return posixpath.dirname(path) if _is_url(path) else os.path.dirname(os.path.abspath(path))


def detect_format(path):
    """The format of one file from its name: "tfrecord", "webdataset", "csv" or "jsonl".
    Names like `train-00000-of-00010` (no extension) that contain "tfrecord" count as
    TFRecord."""
    name = os.path.basename(str(path)).lower()
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    if "tfrecord" in name:
        return "tfrecord"
    return None


def _check_format(format):
    if format is not None and format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS} or None (from the file "
                         f"names); got format={format!r}.")


def resolve_files(path_or_pattern, format=None):
    """Expands a source specification into (format, files, missing).

    `path_or_pattern` is a file, a folder, a glob pattern, a comma-separated string of
    those, or a list of them. Files of a folder are those whose name gives a format
    (`detect_format`). `missing` lists named files that do not exist (a glob or a
    folder that matches nothing raises FileNotFoundError: there would be nothing to
    read)."""
    _check_format(format)
    if isinstance(path_or_pattern, os.PathLike):
        path_or_pattern = os.fspath(path_or_pattern)
    if isinstance(path_or_pattern, str):
        entries = [p.strip() for p in path_or_pattern.split(",") if p.strip()]
    elif isinstance(path_or_pattern, (list, tuple)) and all(
        isinstance(p, (str, os.PathLike)) for p in path_or_pattern
    ):
        entries = [os.fspath(p) for p in path_or_pattern]
    else:
        raise TypeError(
            "`path_or_pattern` must be a path, glob pattern or folder (str), or a list "
            f"of them; got {type(path_or_pattern).__name__}: {path_or_pattern!r}."
        )
    if not entries:
        raise ValueError(f"`path_or_pattern` names no file; got {path_or_pattern!r}.")
    files, missing = [], []
    for entry in entries:
        if any(c in entry for c in _GLOB_CHARS):
            matched = sorted(tf.io.gfile.glob(entry))
            if not matched:
                raise FileNotFoundError(f"`path_or_pattern` {entry!r} matches no file.")
            files.extend(matched)
        elif tf.io.gfile.isdir(entry):
            matched = sorted(
                _join(entry, name) for name in tf.io.gfile.listdir(entry)
                if detect_format(name) and (format is None or detect_format(name) == format)
            )
            if not matched:
                raise FileNotFoundError(
                    f"Folder {entry!r} holds no data file (*.tfrecord, *.tar, *.csv, "
                    "*.jsonl)."
                )
            files.extend(matched)
        elif tf.io.gfile.exists(entry):
            files.append(entry)
        else:
            missing.append(entry)
    named = files + missing
    formats = {format} if format else {detect_format(f) for f in named}
    if None in formats:
        unknown = [f for f in named if detect_format(f) is None]
        raise ValueError(
            f"Cannot tell the data format of {unknown[:3]}: name the files *.tfrecord, "
            "*.tar, *.csv or *.jsonl, or pass `format=` (one of "
            f"{FORMATS})."
        )
    if len(formats) > 1:
        raise ValueError(
            f"`path_or_pattern` mixes formats {sorted(formats)}; give one format per source."
        )
    return formats.pop(), files, missing


def _raw(image=b"", image_path=b"", text=b"", boxes=None, box_texts=None, language=b"",
         source=b"", record=0, status=0):
    """A raw record as eager tensors / Python values (for generators and markers)."""
    return {
        "image": image,
        "image_path": image_path,
        "text": text,
        "boxes": np.zeros((0, 4), np.float32) if boxes is None else boxes,
        "box_texts": np.zeros((0,), object) if box_texts is None else box_texts,
        "language": language,
        "source": source,
        "record": np.int64(record),
        "status": np.int32(status),
    }


def _raw_tensors(**kwargs):
    """`_raw` as graph tensors (inside dataset functions)."""
    out = {}
    for key, spec in RAW_SPEC.items():
        if key in kwargs:
            out[key] = tf.cast(kwargs[key], spec.dtype) if spec.dtype != tf.string else (
                tf.convert_to_tensor(kwargs[key], tf.string))
        elif key == "boxes":
            out[key] = tf.zeros([0, 4], tf.float32)
        elif key == "box_texts":
            out[key] = tf.zeros([0], tf.string)
        else:
            out[key] = tf.zeros([], spec.dtype)
    return out


def _boxes_from_flat(flat):
    """Flat float list -> ((n, 4) boxes, status): boxes whose count is not a multiple
    of 4 give status bad_boxes."""
    flat = tf.reshape(tf.cast(flat, tf.float32), [-1])
    size = tf.size(flat)
    n = size // 4
    boxes = tf.reshape(flat[: n * 4], [n, 4])
    status = tf.where(size % 4 == 0, 0, CODES["bad_boxes"])
    return boxes, tf.cast(status, tf.int32)


# Every dataset function here is plain graph code (Python branches only on static
# values): skipping AutoGraph's source conversion makes building a pipeline much faster.
graph_fn = tf.autograph.experimental.do_not_convert


def protected_map(dataset, fn, fallback, num_parallel_calls=tf.data.AUTOTUNE, cycle_length=16):
    """`dataset.map(fn)` where an element on which `fn` raises (e.g. a parse or decode
    error) becomes `fallback(element)` instead of stopping the pipeline. Order is kept.

    Graph ops cannot catch errors, so each element goes through its own one-element
    dataset with `ignore_errors()`, followed by the fallback: `take(1)` keeps the
    first of the two. Both functions get the element as one argument and must return
    the same structure."""

    def packed(f):  # tf.data unpacks tuple elements into arguments: repack them
        return lambda *args: f(args[0] if len(args) == 1 else args)

    def one(*element):
        element = element[0] if len(element) == 1 else element
        ok = tf.data.Dataset.from_tensors(element).map(graph_fn(packed(fn))).ignore_errors()
        bad = tf.data.Dataset.from_tensors(element).map(graph_fn(packed(fallback)))
        return ok.concatenate(bad).take(1)

    parallel = {} if num_parallel_calls is None else {
        "num_parallel_calls": num_parallel_calls, "deterministic": True}
    return dataset.interleave(graph_fn(one), cycle_length=cycle_length, block_length=1, **parallel)


def epoch_seed(seed, epoch, salt):
    """A stateless-RNG seed (shape [2], int64) for one epoch and one purpose (`salt`)."""
    return tf.stack([tf.cast(seed, tf.int64) * 1000003 + salt, tf.cast(epoch, tf.int64)])


def permuted(values, seed):
    """`values` (a 1-D tensor) in the random order given by `seed` (one op per epoch)."""
    return tf.random.experimental.stateless_shuffle(values, seed=seed)


def shuffled(dataset, buffer_size, seed):
    """`dataset.shuffle(buffer_size)` in an order fixed by `seed` (an int tensor) alone.

    tf.data pairs an op seed with the graph-level seed (`tf.random.set_seed`,
    `keras.utils.set_random_seed`): the order would then change with the user's global
    seed, breaking resumption in a process seeded differently, and a global seed of 0
    makes a tensor op seed fail ("symbolic tf.Tensor as a Python bool"). The graph
    seed is cleared while the op is made, so call this while tracing a dataset function."""
    graph = tf.compat.v1.get_default_graph()
    if tf.executing_eagerly():
        raise RuntimeError("`shuffled` must be called while tracing a dataset function.")
    saved = graph.seed
    graph.seed = None
    try:
        return dataset.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=False)
    finally:
        graph.seed = saved


# ---------------------------------------------------------------------------- sources
class Source:
    """A resolved image-text source: its format and this host's files.

    Build with `open_source`. `epoch_records(epoch, ...)` gives the raw records of one
    epoch, in an order fixed by (seed, epoch).
    """

    format = None

    def __init__(self, files, missing=(), num_hosts=1, host_index=0):
        self.files = list(files)
        self.missing = list(missing)
        self.num_hosts = int(num_hosts)
        self.host_index = int(host_index)

    def __repr__(self):
        return (f"{type(self).__name__}({len(self.files)} file(s), host {self.host_index} "
                f"of {self.num_hosts})")

    def epoch_records(self, epoch, seed=0, shuffle=True, shuffle_buffer=10_000, rows=None):
        """The raw records of one epoch (`epoch` a scalar int64 tensor). `rows`: for
        table sources, the row indices to read (e.g. one language's); ignored by shard
        sources."""
        raise NotImplementedError


class _ShardedSource(Source):
    """Shard-file formats: hosts split the shard files (or, with fewer files than hosts,
    the records of each epoch); each epoch visits this host's shards in a permuted order,
    interleaving `cycle_length` shards, then shuffles records in a buffer."""

    cycle_length = 16

    def __init__(self, files, missing=(), num_hosts=1, host_index=0):
        super().__init__(files, missing, num_hosts, host_index)
        self.record_sharding = len(self.files) < self.num_hosts
        if not self.record_sharding:
            self.files = self.files[self.host_index :: self.num_hosts]

    def _read_shard(self, path):
        raise NotImplementedError

    def epoch_records(self, epoch, seed=0, shuffle=True, shuffle_buffer=10_000, rows=None):
        if tf.executing_eagerly():  # `shuffled` must run while tracing
            build = lambda e: self.epoch_records(e, seed, shuffle, shuffle_buffer, rows)  # noqa: E731
            return tf.data.Dataset.from_tensors(tf.cast(epoch, tf.int64)).flat_map(graph_fn(build))
        files = tf.constant(self.files)
        # Same shard order on every host (they share `seed`); different record order.
        paths = tf.data.Dataset.from_tensor_slices(
            permuted(files, epoch_seed(seed, epoch, 1)) if shuffle else files
        )
        cycle = min(self.cycle_length, len(self.files))
        parallel = {"num_parallel_calls": cycle, "deterministic": True} if cycle > 1 else {}
        records = paths.interleave(graph_fn(self._read_shard), cycle_length=cycle, block_length=1,
                                   **parallel)
        if self.record_sharding:
            records = records.shard(self.num_hosts, self.host_index)
        if shuffle and shuffle_buffer > 1:
            host_seed = epoch_seed(seed + 7919 * self.host_index, epoch, 2)
            records = shuffled(records, shuffle_buffer, host_seed[0] * 65537 + host_seed[1])
        return records


class TFRecordSource(_ShardedSource):
    """TFRecord shards of `tf.train.Example` (see the module docstring for the keys)."""

    format = "tfrecord"
    FEATURES = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "text": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "boxes": tf.io.VarLenFeature(tf.float32),
        "box_texts": tf.io.VarLenFeature(tf.string),
        "language": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }

    def __init__(self, files, missing=(), num_hosts=1, host_index=0):
        super().__init__(files, missing, num_hosts, host_index)
        # File sizes, to tell a truncated shard from a complete one.
        self.sizes = [int(tf.io.gfile.stat(f).length) for f in self.files]

    def _read_shard(self, path):
        sizes = tf.constant(self.sizes, tf.int64)
        size = sizes[tf.argmax(tf.cast(tf.equal(tf.constant(self.files), path), tf.int32))]

        def parse(element):
            index, record = element
            example = tf.io.parse_single_example(record, self.FEATURES)
            boxes, status = _boxes_from_flat(tf.sparse.to_dense(example["boxes"]))
            return _raw_tensors(
                image=example["image/encoded"], text=example["text"], boxes=boxes,
                box_texts=tf.sparse.to_dense(example["box_texts"]),
                language=example["language"], source=path, record=index, status=status,
            ), tf.cast(tf.strings.length(record), tf.int64) + 16

        def unparsable(element):
            index, record = element
            return _raw_tensors(
                source=path, record=index, status=CODES["unreadable_record"]
            ), tf.cast(tf.strings.length(record), tf.int64) + 16

        # A truncated shard raises DataLossError at its end: stop reading it there and
        # emit an end-of-shard marker whose byte count tells whether all was read.
        records = tf.data.TFRecordDataset(path).ignore_errors().enumerate()
        records = protected_map(records, parse, unparsable, num_parallel_calls=None, cycle_length=4)
        end = tf.data.Dataset.from_tensors(
            (_raw_tensors(source=path, record=-1, status=END_OF_SHARD), tf.constant(0, tf.int64))
        )

        def running_bytes(total, element):
            raw, length = element
            total = total + length
            return total, (raw, total)

        def end_marker(raw, total):
            truncated = tf.logical_and(tf.equal(raw["status"], END_OF_SHARD), total != size)
            status = tf.where(truncated, CODES["truncated_shard"], raw["status"])
            return {**raw, "status": tf.cast(status, tf.int32)}

        return (
            records.concatenate(end)
            .scan(tf.constant(0, tf.int64), graph_fn(running_bytes))
            .map(graph_fn(end_marker))
            .filter(graph_fn(lambda raw: raw["status"] != END_OF_SHARD))
        )


class WebDatasetSource(_ShardedSource):
    """WebDataset-style `.tar` shards (see the module docstring), read with `tarfile`."""

    format = "webdataset"

    @staticmethod
    def iterate_shard(path):
        """Yields raw records (numpy / bytes) of one `.tar` shard, in file order."""
        path = path.decode() if isinstance(path, bytes) else path
        source = path.encode()
        index = 0
        try:
            with tf.io.gfile.GFile(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                key, members = None, {}
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, base = posixpath.split(member.name)
                    stem, _, ext = base.partition(".")
                    member_key = posixpath.join(folder, stem)
                    if key is not None and member_key != key:
                        yield _webdataset_record(members, source, index)
                        index += 1
                        members = {}
                    key = member_key
                    members[ext.lower()] = tar.extractfile(member).read()
                if key is not None:
                    yield _webdataset_record(members, source, index)
        except (tarfile.TarError, EOFError, OSError, tf.errors.OpError):
            yield _raw(source=source, record=index, status=CODES["truncated_shard"])

    def _read_shard(self, path):
        return tf.data.Dataset.from_generator(
            self.iterate_shard, output_signature=RAW_SPEC, args=(path,)
        )


def _webdataset_record(members, source, index):
    image = b""
    for ext in IMAGE_EXTENSIONS:
        if ext in members:
            image = members[ext]
            break
    text = members.get("txt", members.get("text", b""))
    fields = {}
    if "json" in members:
        try:
            fields = _parse_json_fields(json.loads(members["json"]))
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            del e
            return _raw(image=image, source=source, record=index,
                        status=CODES["unreadable_record"])
    if "caption" in fields and not text:
        text = fields.pop("caption")
    fields.pop("caption", None)
    return _raw(image=image, text=text, source=source, record=index, **fields)


def _parse_json_fields(obj):
    """caption / boxes / box_texts / language of a JSON object (WebDataset .json member
    or JSONL row). Raises ValueError / TypeError if a field has the wrong type."""
    if not isinstance(obj, dict):
        raise TypeError("not a JSON object")
    out = {}
    caption = obj.get("caption", obj.get("text"))
    if caption is not None:
        if not isinstance(caption, str):
            raise TypeError("caption is not a string")
        out["caption"] = caption.encode("utf-8", "surrogateescape")
    status = 0
    if obj.get("boxes") is not None:
        flat = np.asarray(obj["boxes"], dtype=np.float32).reshape(-1)
        n = flat.size // 4
        if flat.size % 4:
            status = CODES["bad_boxes"]
        out["boxes"] = flat[: 4 * n].reshape(n, 4)
    if obj.get("box_texts") is not None:
        texts = obj["box_texts"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError("box_texts is not a list of strings")
        out["box_texts"] = np.array([t.encode("utf-8", "surrogateescape") for t in texts] or [],
                                    dtype=object)
    if obj.get("language") is not None:
        out["language"] = str(obj["language"]).encode()
    out["status"] = status
    return out


class TableSource(Source):
    """A CSV or JSONL file of `image_path, caption` rows (see the module docstring). The
    rows are loaded into memory; images are read inside the pipeline."""

    def __init__(self, files, missing=(), num_hosts=1, host_index=0, format="csv"):
        super().__init__(files, missing, num_hosts, host_index)
        self.format = format
        rows = []
        for path in self.files:
            rows.extend(_read_table(path, format))
        rows = rows[self.host_index :: self.num_hosts]
        self.num_rows = len(rows)
        if not rows:
            raise ValueError(f"{self.files} hold no data rows (after host sharding: host "
                             f"{self.host_index} of {self.num_hosts}).")
        self._columns = {
            "image_path": tf.constant([r["image_path"] for r in rows], tf.string),
            "text": tf.constant([r["text"] for r in rows], tf.string),
            "language": tf.constant([r["language"] for r in rows], tf.string),
            "source": tf.constant([r["source"] for r in rows], tf.string),
            "record": tf.constant([r["record"] for r in rows], tf.int64),
            "status": tf.constant([r["status"] for r in rows], tf.int32),
        }
        self.row_languages = self._columns["language"]
        self._boxes = tf.RaggedTensor.from_row_lengths(
            tf.constant(np.asarray([b for r in rows for b in r["boxes"]], np.float32).reshape(-1, 4)),
            tf.constant([len(r["boxes"]) for r in rows], tf.int64),
        )
        self._box_texts = tf.RaggedTensor.from_row_lengths(
            tf.constant([t for r in rows for t in r["box_texts"]], tf.string, shape=[
                sum(len(r["box_texts"]) for r in rows)]),
            tf.constant([len(r["box_texts"]) for r in rows], tf.int64),
        )

    def _rows(self, indices):
        """Raw records of a batch of row indices (vectorized; unbatched afterwards)."""
        out = {k: tf.gather(v, indices) for k, v in self._columns.items()}
        out["boxes"] = tf.gather(self._boxes, indices)
        out["box_texts"] = tf.gather(self._box_texts, indices)
        out["image"] = tf.fill(tf.shape(indices), "")
        return {k: out[k] for k in RAW_SPEC}

    def epoch_records(self, epoch, seed=0, shuffle=True, shuffle_buffer=10_000, rows=None):
        rows = np.arange(self.num_rows) if rows is None else np.asarray(rows, np.int64)
        rows = tf.constant(rows, tf.int64)
        order = permuted(rows, epoch_seed(seed, epoch, 3)) if shuffle else rows
        # Rows are gathered 256 at a time: much cheaper than one tf.data call per row.
        return (
            tf.data.Dataset.from_tensor_slices(order)
            .batch(256)
            .map(graph_fn(self._rows))
            .unbatch()
            .map(graph_fn(_dense_record))  # unbatched ragged rows -> plain tensors
        )


def _dense_record(raw):
    return {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v for k, v in raw.items()}


def _read_table(path, format):
    """Rows of a CSV / JSONL file as dicts of bytes / numbers. Undecodable bytes are
    kept (surrogateescape) so that the pipeline can count non-UTF-8 captions."""
    folder = _dirname(path)
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    rows = []

    def row(record, image_path=b"", caption=b"", language=b"", boxes=(), box_texts=(), status=0):
        if image_path:
            image_path = _join(folder, image_path).encode("utf-8", "surrogateescape")
        return {"image_path": image_path, "text": caption, "language": language,
                "boxes": list(boxes), "box_texts": list(box_texts), "source": path.encode(),
                "record": record, "status": status}

    if format == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                fields = _parse_json_fields(obj)
                image_path = obj.get("image_path", obj.get("image"))
                if not isinstance(image_path, str):
                    raise TypeError("image_path is not a string")
            except (ValueError, TypeError) as e:
                del e
                rows.append(row(number, status=CODES["unreadable_record"]))
                continue
            rows.append(row(number, image_path, fields.get("caption", b""),
                            fields.get("language", b""), fields.get("boxes", ()),
                            fields.get("box_texts", ()), fields.get("status", 0)))
        return rows

    dialect = "excel-tab" if path.lower().endswith(".tsv") else "excel"
    reader = csv.reader(io.StringIO(text, newline=""), dialect=dialect)
    header = next(reader, None)
    if header is None:
        return rows
    names = [h.strip().lower() for h in header]
    path_col = next((names.index(n) for n in ("image_path", "image", "filepath", "path")
                     if n in names), None)
    caption_col = next((names.index(n) for n in ("caption", "text", "title") if n in names),
                       None)
    if path_col is None or caption_col is None:
        raise ValueError(
            f"CSV file {path!r} must start with a header naming the columns `image_path` "
            f"and `caption` (optional `language`); got header {header!r}."
        )
    language_col = names.index("language") if "language" in names else None
    for number, fields in enumerate(reader, start=1):
        if not fields:
            continue
        if len(fields) <= max(path_col, caption_col):
            rows.append(row(number, status=CODES["unreadable_record"]))
            continue

        def raw(i):
            return fields[i].encode("utf-8", "surrogateescape")

        language = raw(language_col).strip() if language_col is not None and language_col < len(
            fields) else b""
        rows.append(row(number, fields[path_col].strip(), raw(caption_col), language))
    return rows


def open_source(path_or_pattern, format=None, num_hosts=1, host_index=0, strict=False,
                report=None):
    """Resolves `path_or_pattern` (see `resolve_files`) into a `Source`.

    Missing named files are counted in `report` as `missing_shard` (and logged), or
    raise FileNotFoundError with `strict=True` or when no file at all exists."""
    if isinstance(num_hosts, bool) or not isinstance(num_hosts, (int, np.integer)) or num_hosts < 1:
        raise ValueError(f"`num_hosts` must be a positive int; got num_hosts={num_hosts!r}.")
    if (isinstance(host_index, bool) or not isinstance(host_index, (int, np.integer))
            or not 0 <= host_index < num_hosts):
        raise ValueError(
            f"`host_index` must be an int in [0, num_hosts={num_hosts}); got "
            f"host_index={host_index!r}."
        )
    format, files, missing = resolve_files(path_or_pattern, format)
    if missing:
        if strict or not files:
            raise FileNotFoundError(
                f"Data file(s) not found: {missing}" + ("" if files else " (no file of "
                f"`path_or_pattern`={path_or_pattern!r} exists)")
            )
        from keras_siglip2.training.data.report import logger

        logger.warning("keras_siglip2 data: skipping %d missing shard(s): %s", len(missing),
                       missing)
        if report is not None:
            report.add("missing_shard", len(missing))
    if format in ("csv", "jsonl"):
        return TableSource(files, missing, num_hosts, host_index, format=format)
    cls = TFRecordSource if format == "tfrecord" else WebDatasetSource
    return cls(files, missing, num_hosts, host_index)


# ---------------------------------------------------------------------------- writers
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


def _as_bytes(value):
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def encode_image(image, image_format="png"):
    """Encoded bytes of an image: bytes pass through; a uint8 (H, W, 3) array (or PIL
    image) is encoded as PNG (lossless, the default) or JPEG (quality 95)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    from PIL import Image

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
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"`num_shards` must be a positive int; got {num_shards!r}.")
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
                if boxes.size or box_texts or language is not None:
                    meta = {"boxes": boxes.tolist(), "box_texts": [
                        t.decode("utf-8", "surrogateescape") if isinstance(t, bytes) else t
                        for t in box_texts]}
                    if language is not None:
                        meta["language"] = language.decode() if isinstance(language, bytes) else language
                    members["json"] = json.dumps(meta).encode()
                for ext, payload in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return names


def write_csv(path, examples, image_dir=None, image_format="png"):
    """Writes each example's image to `image_dir` (default: an `images` folder beside
    `path`) and a CSV (`image_path,caption[,language]`) or, for a `.jsonl` path, JSONL
    rows (with boxes / box_texts / language) whose image paths are relative to the
    file. Returns `path`."""
    path = os.fspath(path)
    jsonl = path.lower().endswith(".jsonl")
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
        relative = image_path if _is_url(image_path) else os.path.relpath(image_path, folder)
        caption = caption.decode("utf-8", "surrogateescape") if isinstance(caption, bytes) else caption
        rows.append((relative, caption, boxes, box_texts, language))
    buffer = io.StringIO(newline="")
    if jsonl:
        for relative, caption, boxes, box_texts, language in rows:
            obj = {"image_path": relative, "caption": caption}
            if boxes.size or box_texts:
                obj["boxes"] = boxes.tolist()
                obj["box_texts"] = [t.decode() if isinstance(t, bytes) else t for t in box_texts]
            if language is not None:
                obj["language"] = language.decode() if isinstance(language, bytes) else language
            buffer.write(json.dumps(obj, ensure_ascii=False) + "\n")
    else:
        with_language = any(r[4] is not None for r in rows)
        writer = csv.writer(buffer)
        writer.writerow(["image_path", "caption"] + (["language"] if with_language else []))
        for relative, caption, _, _, language in rows:
            lang = language.decode() if isinstance(language, bytes) else language
            writer.writerow([relative, caption] + ([lang or ""] if with_language else []))
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue().encode("utf-8", "surrogateescape"))
    return path
