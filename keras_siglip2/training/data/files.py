"""Where image-text training data lives (paper sec. 2: the image-text pairs SigLIP 2
trains on): file names -> format ("tfrecord", "webdataset", "csv", "jsonl"), and a source
specification (file, folder, glob pattern, comma-separated string or list) -> the files
to read. Paths are local or anything `tf.io.gfile` opens (`gs://...`)."""

import os
import posixpath

import tensorflow as tf

FORMATS = ("tfrecord", "webdataset", "csv", "jsonl")
_EXTENSIONS = {
    ".tfrecord": "tfrecord", ".tfrecords": "tfrecord", ".tfrec": "tfrecord",
    ".tar": "webdataset", ".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl",
}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
_GLOB_CHARS = "*?["



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
