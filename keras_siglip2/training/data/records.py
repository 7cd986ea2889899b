"""The raw record every reader produces (`RAW_SPEC`) and the `tf.data` helpers the
readers and the pipeline share (paper sec. 2: image-text pairs, with boxes and box
captions for the LocCa decoder, sec. 2.2): record constructors, box parsing (flat lists,
JSON objects), the error-tolerant map, and stateless seeds / shuffles that keep a run
reproducible and resumable.

Problems found while reading (an unparsable record, boxes that are not 4 numbers each)
do not raise: the record carries a `status` code (`report.REASONS`)."""

import numpy as np
import tensorflow as tf

from keras_siglip2.training.data.report import CODES

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
    # M4 balancing annotations (`balancing.py`): 0/1 per sensitive attribute / proxy
    # concept, empty when the record has none.
    "attributes": tf.TensorSpec([None], tf.float32),
    "proxies": tf.TensorSpec([None], tf.float32),
}
ANNOTATION_KEYS = ("attributes", "proxies")


def _raw(image=b"", image_path=b"", text=b"", boxes=None, box_texts=None, language=b"",
         source=b"", record=0, status=0, attributes=None, proxies=None):
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
        "attributes": np.zeros((0,), np.float32) if attributes is None else attributes,
        "proxies": np.zeros((0,), np.float32) if proxies is None else proxies,
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
        elif key in ("box_texts",) + ANNOTATION_KEYS:
            out[key] = tf.zeros([0], spec.dtype)
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


def _parse_json_fields(obj):
    """caption / boxes / box_texts / language / attributes / proxies of a JSON object
    (WebDataset .json member, JSONL row, or the JSON cells of a CSV row). Raises ValueError / TypeError if a field has the wrong type."""
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
    for key in ANNOTATION_KEYS:
        if obj.get(key) is not None:
            values = obj[key]
            if not isinstance(values, list) or not all(isinstance(v, (int, float))
                                                       for v in values):
                raise TypeError(f"{key} is not a list of 0/1 numbers")
            out[key] = np.asarray(values, np.float32).reshape(-1)
    out["status"] = status
    return out
