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

This module re-exports the stages it was split into (one module per stage):
`files` (formats, resolving a source specification), `records` (the raw record and
shared `tf.data` helpers), `readers` (the `Source` classes, `open_source`) and
`writers`. Importing from `keras_siglip2.training.data.sources` keeps working.
"""

from keras_siglip2.training.data.files import (  # noqa: F401
    _EXTENSIONS,
    _GLOB_CHARS,
    FORMATS,
    IMAGE_EXTENSIONS,
    _check_format,
    _dirname,
    _is_url,
    _join,
    detect_format,
    resolve_files,
)
from keras_siglip2.training.data.readers import (  # noqa: F401
    Source,
    TableSource,
    TFRecordSource,
    WebDatasetSource,
    _dense_record,
    _read_table,
    _ShardedSource,
    _webdataset_record,
    open_source,
)
from keras_siglip2.training.data.records import (  # noqa: F401
    RAW_SPEC,
    _boxes_from_flat,
    _parse_json_fields,
    _raw,
    _raw_tensors,
    epoch_seed,
    graph_fn,
    permuted,
    protected_map,
    shuffled,
)
from keras_siglip2.training.data.writers import (  # noqa: F401
    _as_bytes,
    _bytes_feature,
    _example_fields,
    _image_extension,
    _shard_names,
    _split,
    encode_image,
    write_csv,
    write_tfrecord_shards,
    write_webdataset_shards,
)
