"""Readers of image-text training data (paper sec. 2: SigLIP 2 trains on image-text
pairs, with boxes and box captions for the LocCa decoder, sec. 2.2), all into the same
stream of raw records (`records.RAW_SPEC`):

- TFRecord shards of `tf.train.Example`s (`TFRecordSource`);
- WebDataset-style `.tar` shards (`WebDatasetSource`);
- a CSV or JSONL table of rows (`TableSource`).

The keys of each format are listed in `sources.py` (the module users read). Records are
read inside the `tf.data` graph (TFRecord, CSV/JSONL: the whole pipeline can be
checkpointed with `tf.train.Checkpoint(iterator=...)`) except `.tar` shards, which are
unpacked by Python's `tarfile` through `tf.data.Dataset.from_generator`."""

import csv
import io
import json
import posixpath
import tarfile

import numpy as np
import tensorflow as tf

from keras_siglip2.checks import check_int, check_positive_int
from keras_siglip2.training.data.files import IMAGE_EXTENSIONS, _dirname, _join, resolve_files
from keras_siglip2.training.data.records import (
    RAW_SPEC,
    _parse_json_fields,
    _raw,
    _raw_tensors,
    _boxes_from_flat,
    epoch_seed,
    graph_fn,
    permuted,
    protected_map,
    shuffled,
)
from keras_siglip2.training.data.report import CODES, END_OF_SHARD, logger

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
        "attributes": tf.io.VarLenFeature(tf.float32),
        "proxies": tf.io.VarLenFeature(tf.float32),
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
                attributes=tf.sparse.to_dense(example["attributes"]),
                proxies=tf.sparse.to_dense(example["proxies"]),
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
        self._ragged = {
            "boxes": _ragged(rows, "boxes", tf.float32, (4,)),
            "box_texts": _ragged(rows, "box_texts", tf.string),
            "attributes": _ragged(rows, "attributes", tf.float32),
            "proxies": _ragged(rows, "proxies", tf.float32),
        }

    def _rows(self, indices):
        """Raw records of a batch of row indices (vectorized; unbatched afterwards)."""
        out = {k: tf.gather(v, indices) for k, v in self._columns.items()}
        out.update({k: tf.gather(v, indices) for k, v in self._ragged.items()})
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


def _ragged(rows, key, dtype, inner=()):
    """The variable-length column `key` of table rows as a RaggedTensor."""
    values = [v for r in rows for v in r[key]]
    if dtype == tf.string:
        flat = tf.constant(values, tf.string, shape=[len(values)])
    else:
        flat = tf.constant(np.asarray(values, np.float32).reshape((-1,) + inner))
    return tf.RaggedTensor.from_row_lengths(flat, tf.constant([len(r[key]) for r in rows],
                                                             tf.int64))


def _dense_record(raw):
    return {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v for k, v in raw.items()}


# CSV columns holding JSON (boxes, box texts, M4 annotations): see `sources.py`.
JSON_COLUMNS = ("boxes", "box_texts", "attributes", "proxies")


def _read_table(path, format):
    """Rows of a CSV / JSONL file as dicts of bytes / numbers. Undecodable bytes are
    kept (surrogateescape) so that the pipeline can count non-UTF-8 captions."""
    folder = _dirname(path)
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]

    def row(record, image_path=b"", caption=b"", language=b"", boxes=(), box_texts=(),
            status=0, attributes=(), proxies=()):
        if image_path:
            image_path = _join(folder, image_path).encode("utf-8", "surrogateescape")
        return {"image_path": image_path, "text": caption, "language": language,
                "boxes": list(boxes), "box_texts": list(box_texts), "source": path.encode(),
                "record": record, "status": status, "attributes": list(attributes),
                "proxies": list(proxies)}

    if format == "jsonl":
        return _read_jsonl(text, row)
    return _read_csv(path, text, row)


def _read_jsonl(text, row):
    rows = []
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
        caption = fields.pop("caption", b"")
        rows.append(row(number, image_path, caption, **fields))
    return rows


def _json_cells(fields, columns):
    """The JSON columns of one CSV row parsed like a JSON record's keys; a cell that is
    not JSON of the right type gives status bad_boxes (for boxes / box_texts) or
    unreadable_record (annotations)."""
    obj = {}
    for name, i in columns.items():
        cell = fields[i].strip() if i < len(fields) else ""
        if not cell:
            continue
        try:
            obj[name] = json.loads(cell)
        except ValueError:
            return {"status": CODES["bad_boxes" if name.startswith("box") else
                                    "unreadable_record"]}
    try:
        return _parse_json_fields(obj)
    except (ValueError, TypeError):
        bad_boxes = set(obj) & {"boxes", "box_texts"}
        return {"status": CODES["bad_boxes" if bad_boxes else "unreadable_record"]}


def _read_csv(path, text, row):
    dialect = "excel-tab" if path.lower().endswith(".tsv") else "excel"
    reader = csv.reader(io.StringIO(text, newline=""), dialect=dialect)
    header = next(reader, None)
    if header is None:
        return []
    names = [h.strip().lower() for h in header]
    path_col = next((names.index(n) for n in ("image_path", "image", "filepath", "path")
                     if n in names), None)
    caption_col = next((names.index(n) for n in ("caption", "text", "title") if n in names),
                       None)
    if path_col is None or caption_col is None:
        raise ValueError(
            f"CSV file {path!r} must start with a header naming the columns `image_path` "
            f"and `caption` (optional `language`, `boxes`, `box_texts`); got header "
            f"{header!r}."
        )
    language_col = names.index("language") if "language" in names else None
    json_columns = {n: names.index(n) for n in JSON_COLUMNS if n in names}
    rows = []
    for number, fields in enumerate(reader, start=1):
        if not fields:
            continue
        if len(fields) <= max(path_col, caption_col):
            rows.append(row(number, status=CODES["unreadable_record"]))
            continue
        language = (fields[language_col].encode("utf-8", "surrogateescape").strip()
                    if language_col is not None and language_col < len(fields) else b"")
        extras = _json_cells(fields, json_columns)
        extras.pop("caption", None)
        extras.pop("language", None)
        rows.append(row(number, fields[path_col].strip(),
                        fields[caption_col].encode("utf-8", "surrogateescape"), language,
                        **extras))
    return rows


def open_source(path_or_pattern, format=None, num_hosts=1, host_index=0, strict=False,
                report=None):
    """Resolves `path_or_pattern` (see `resolve_files`) into a `Source`.

    Missing named files are counted in `report` as `missing_shard` (and logged), or
    raise FileNotFoundError with `strict=True` or when no file at all exists."""
    num_hosts = check_positive_int("num_hosts", num_hosts)
    host_index = check_int("host_index", host_index, minimum=0)
    if host_index >= num_hosts:
        raise ValueError(f"`host_index` must be an int in [0, num_hosts={num_hosts}); got "
                         f"host_index={host_index!r}.")
    format, files, missing = resolve_files(path_or_pattern, format)
    if missing:
        if strict or not files:
            raise FileNotFoundError(
                f"Data file(s) not found: {missing}" + ("" if files else " (no file of "
                f"`path_or_pattern`={path_or_pattern!r} exists)")
            )
        logger.warning("keras_siglip2 data: skipping %d missing shard(s): %s", len(missing),
                       missing)
        if report is not None:
            report.add("missing_shard", len(missing))
    if format in ("csv", "jsonl"):
        return TableSource(files, missing, num_hosts, host_index, format=format)
    cls = TFRecordSource if format == "tfrecord" else WebDatasetSource
    return cls(files, missing, num_hosts, host_index)
