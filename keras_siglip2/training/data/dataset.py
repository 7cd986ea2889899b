"""`image_text_dataset`: the `tf.data` input pipeline of the SigLIP 2 recipe (paper
sec. 2) for a user's own image-text data; the stages are described in `pipeline.py`
(the module users import it from). This module wires them: checked arguments
(`_Plan`), the record stream (`stream.py`), decoding and views (`views.py`), batching,
tokenization and LocCa targets (`locca_fields.py`)."""

import keras
import tensorflow as tf

from keras_siglip2.checks import check_fraction, check_int, check_positive_int
from keras_siglip2.preprocessing import SigLIP2ImageConverter, SigLIP2NaFlexImageConverter
from keras_siglip2.training.data import augment
from keras_siglip2.training.data.balance_stage import BalancingStage, fit_balancer
from keras_siglip2.training.data.config import DataConfig
from keras_siglip2.training.data.info import DatasetInfo
from keras_siglip2.training.data.languages import _check_language_weights
from keras_siglip2.training.data.locca_fields import locca_batch_fields
from keras_siglip2.training.data.readers import open_source
from keras_siglip2.training.data.record_checks import _strict_assert
from keras_siglip2.training.data.records import graph_fn, protected_map
from keras_siglip2.training.data.report import END_OF_EPOCH, DataReport
from keras_siglip2.training.data.stream import record_stream
from keras_siglip2.training.data.views import _check_views, _Views

EXTRA_FIELDS = ("texts", "boxes", "box_texts", "language", "source", "record")


def default_host():
    """(num_hosts, host_index): `jax.process_count()` / `jax.process_index()` on the
    JAX backend, else (1, 0)."""
    if keras.backend.backend() == "jax":
        import jax  # lazy: jax is imported only on the JAX backend

        return jax.process_count(), jax.process_index()
    return 1, 0


# --------------------------------------------------------------------------- arguments
def _check_read(read, filter_fn):
    """The checked `ReadConfig` values: (num_epochs, seed, start_batch, shuffle_buffer,
    extra_fields, num_hosts, host_index)."""
    num_epochs = check_positive_int("num_epochs", read.num_epochs, allow_none=True)
    seed = check_int("seed", read.seed, minimum=0)
    start_batch = check_int("start_batch", read.start_batch, minimum=0)
    shuffle_buffer = check_int("shuffle_buffer", read.shuffle_buffer, minimum=0)
    extra_fields = tuple(read.extra_fields)
    bad = [f for f in extra_fields if f not in EXTRA_FIELDS]
    if bad:
        raise ValueError(f"`extra_fields` must be a subset of {EXTRA_FIELDS}; got {bad}.")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"`filter_fn` must be callable or None; got {filter_fn!r}.")
    num_hosts, host_index = read.num_hosts, read.host_index
    if num_hosts is None and host_index is None:
        num_hosts, host_index = default_host()
    elif num_hosts is None or host_index is None:
        raise ValueError("Give both `num_hosts` and `host_index`, or neither.")
    return num_epochs, seed, start_batch, shuffle_buffer, extra_fields, num_hosts, host_index


def _converters(view, views, converter):
    """(converter, naflex, views, lengths) for the main image view."""
    naflex = "naflex" in views or isinstance(converter, SigLIP2NaFlexImageConverter)
    lengths = ()
    if naflex:
        if not isinstance(converter, SigLIP2NaFlexImageConverter):
            converter = SigLIP2NaFlexImageConverter(patch_size=view.patch_size or 16)
        lengths = tuple(check_positive_int("naflex_sequence_lengths", n)
                        for n in view.naflex_sequence_lengths)
        if not lengths:
            raise ValueError("`naflex_sequence_lengths` must name at least one length.")
        views = tuple(v for v in views if v != "image") + (() if "naflex" in views else ("naflex",))
        return converter, naflex, views, lengths
    if view.image_size is not None:
        converter = SigLIP2ImageConverter(image_size=view.image_size)
    if converter is None or converter.image_size is None:
        raise ValueError(
            "`image_text_dataset` needs the model resolution: pass `image_size=` "
            "(e.g. 224) or a `preprocessor` whose image converter has one."
        )
    return converter, naflex, views, lengths


def _crop_scale(name, scale):
    lo, hi = (float(x) for x in scale)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"`{name}` must be (low, high) with 0 < low <= high <= 1; got "
                         f"{scale!r}.")
    return lo, hi


def _local_converter(view, converter):
    """(local converter, local_crop_scale) of the SILC "local" view; checks the
    teacher view's arguments too."""
    check_positive_int("num_local_crops", view.num_local_crops)
    size = view.local_crop_size
    if size is None:
        size = augment.silc_local_size(converter.image_size, view.patch_size or 16)
    if view.teacher_crop_scale is not None:
        _crop_scale("teacher_crop_scale", view.teacher_crop_scale)
        check_fraction("teacher_jitter_probability", view.teacher_jitter_probability)
        check_fraction("teacher_grayscale_probability", view.teacher_grayscale_probability)
        jitter = view.teacher_color_jitter
        if jitter is not None and (len(tuple(jitter)) != 4 or not all(
                0 <= float(x) for x in jitter) or float(tuple(jitter)[3]) > 0.5):
            raise ValueError("`teacher_color_jitter` must be None or 4 strengths (brightness, "
                             f"contrast, saturation >= 0, hue in [0, 0.5]); got {jitter!r}.")
    return (SigLIP2ImageConverter(image_size=size),
            _crop_scale("local_crop_scale", view.local_crop_scale))


def _num_patches(view, converter):
    """Patches of the TIPS mask of the "masked" view."""
    if view.patch_size is None:
        raise ValueError("The 'masked' (TIPS) view needs `patch_size=` (the vision "
                         "tower's patch size) to size the mask.")
    patch_size = check_positive_int("patch_size", view.patch_size)
    h, w = converter.image_size
    if h % patch_size or w % patch_size:
        raise ValueError(f"`image_size` {converter.image_size} is not a multiple of "
                         f"`patch_size`={patch_size}.")
    if not 0.0 <= float(view.mask_ratio) <= 1.0:
        raise ValueError(f"`mask_ratio` must be in [0, 1]; got {view.mask_ratio!r}.")
    return (h // patch_size) * (w // patch_size)


class _Plan:
    """The checked arguments of one `image_text_dataset` call and the components they
    make (converters, views, language buckets)."""

    def __init__(self, config, batch_size, preprocessor, tokenizer, filter_fn,
                 balancing=None, balancing_fit_examples=100_000):
        self.config = config
        self.batch_size = check_positive_int("batch_size", batch_size)
        views = _check_views(config.views.views)
        (self.num_epochs, self.seed, self.start_batch, self.shuffle_buffer, self.extra_fields,
         self.num_hosts, self.host_index) = _check_read(config.read, filter_fn)
        self.filter_fn = filter_fn
        self.balancing = None if balancing is None else BalancingStage(
            balancing, balancing_fit_examples)
        self.weights = _check_language_weights(config.mixture.language_weights)
        if not isinstance(config.mixture.default_language, str):
            raise TypeError("`default_language` must be a str; got "
                            f"{config.mixture.default_language!r}.")
        self.default_language = config.mixture.default_language.strip().lower()
        converter = None
        if preprocessor is not None:
            tokenizer = preprocessor.tokenizer if tokenizer is None else tokenizer
            converter = preprocessor.image_converter
        self.tokenizer = tokenizer
        view = config.views
        self.converter, self.naflex, self.views, self.lengths = _converters(view, views,
                                                                            converter)
        self.local_converter, self.local_crop_scale = (
            _local_converter(view, self.converter) if "local" in self.views
            else (None, view.local_crop_scale))
        self.num_patches = _num_patches(view, self.converter) if "masked" in self.views else None
        self.locca = bool(config.locca.enabled)
        if self.locca and tokenizer is None:
            raise ValueError("`locca=True` needs a tokenizer (or a preprocessor).")
        self.locca_options = config.locca.options()
        self.bucket_names = ("all",) if self.weights is None else tuple(self.weights)

    def views_fn(self):
        return _Views(self.views, self.converter, self.local_converter, self.num_patches,
                      self.seed, self.naflex, self.config.views, self.local_crop_scale)


# --------------------------------------------------------------------------- stages
def _has_region(element):
    """Whether a decoded example has a box with a non-empty box caption (LocCa ARef /
    GCap can train on it)."""
    texts = tf.strings.strip(element["box_texts"])
    n = tf.minimum(tf.shape(element["boxes"])[0], tf.shape(texts)[0])
    return tf.reduce_any(tf.strings.length(texts[:n]) > 0)


def _after_decode(report, strict):
    """Counts each decoded element (the end-of-epoch marker prints the report) and
    marks what to keep."""
    def after_decode(element):
        status = element["status"]
        marker = tf.equal(status, END_OF_EPOCH)
        code = tf.where(marker, 0, status)
        deps = [_strict_assert(code, element)] if strict else []
        deps.append(report.count(code))
        deps.append(report.note_bad(code, element["source"], element["record"]))
        deps.append(tf.cond(marker, lambda: report.end_epoch(element["bucket"]),
                            lambda: tf.constant(0, tf.int64)))
        ok = tf.logical_and(tf.logical_not(marker), code == 0)
        deps.append(tf.cond(ok, report.count_delivered, lambda: tf.identity(report.delivered)))
        deps.append(tf.cond(tf.logical_and(ok, _has_region(element)),
                            lambda: report.count_regions(True),
                            lambda: tf.identity(report.with_regions)))
        with tf.control_dependencies(deps):
            return {**element, "keep": tf.identity(ok)}

    return after_decode


def _finish_fn(plan):
    """The per-example outputs (the NaFlex patches with the batch's sequence length)."""
    lengths_t = tf.constant(plan.lengths if plan.naflex else [0], tf.int32)
    wanted = set(plan.extra_fields)

    def finish(index, element):
        out = {k: element[k] for k in ("images", "local_images", "teacher_images",
                                                 "tips_mask") if k in element}
        if plan.naflex:
            choice = tf.random.stateless_uniform(
                [], seed=tf.stack([tf.cast(plan.seed, tf.int64) + 104729,
                                   index // plan.batch_size]),
                maxval=len(plan.lengths), dtype=tf.int32,
            )
            branches = [(lambda n=n: plan.converter(element["image_uint8"], max_num_patches=n))
                        for n in plan.lengths]
            patches = tf.switch_case(choice, branches)
            out.update({k: patches[k] for k in ("pixel_patches", "patch_positions", "patch_mask")})
            out["sequence_length"] = tf.gather(lengths_t, choice)
        out["texts"] = element["text"]
        if "boxes" in wanted or plan.locca:
            out["boxes"] = element["boxes"]
            out["num_boxes"] = tf.shape(element["boxes"])[0]
        if "box_texts" in wanted or plan.locca:
            out["box_texts"] = element["box_texts"]
        for key in ("language", "source", "record"):
            if key in wanted:
                out[key] = element[key]
        return out

    return finish


def _batch_fn(plan):
    """Tokenization, LocCa fields, and dropping what was only needed for them."""
    tokenizer, wanted = plan.tokenizer, set(plan.extra_fields)

    def batch_outputs(batch_index, batch):
        batch = dict(batch)
        if plan.naflex:
            # One sequence length per batch: all examples carry the same value.
            batch.pop("sequence_length")
        if tokenizer is not None:
            batch["token_ids"] = tf.cast(tokenizer(batch["texts"]), tf.int32)
        if plan.locca:
            batch.update(locca_batch_fields(batch, tokenizer, tf.stack(
                [tf.cast(plan.seed, tf.int64) + 15485863, batch_index]), **plan.locca_options))
        drop = []
        if tokenizer is not None and "texts" not in wanted:
            drop.append("texts")
        if "boxes" not in wanted:
            drop += [k for k in ("boxes", "num_boxes") if k in batch]
        if "box_texts" not in wanted and "box_texts" in batch:
            drop.append("box_texts")
        for key in drop:
            batch.pop(key)
        return batch

    return batch_outputs


def _with_options(stream):
    options = tf.data.Options()
    options.deterministic = True
    # The report's counters are state outside the pipeline: a checkpoint of the
    # iterator stores them through `report`, not the iterator.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE
    )
    return stream.with_options(options)


def _build(path_or_pattern, plan):
    """The dataset of `plan` (stages 1-5 of the `pipeline.py` docstring)."""
    read = plan.config.read
    report = DataReport(plan.bucket_names)
    source = open_source(path_or_pattern, format=read.format, num_hosts=plan.num_hosts,
                         host_index=plan.host_index, strict=read.strict, report=report)
    common = dict(language_weights=plan.weights, default_language=plan.default_language,
                  filter_fn=plan.filter_fn, seed=plan.seed,
                  num_parallel_calls=read.num_parallel_calls)
    stage = plan.balancing
    if stage is not None:
        # An unfitted balancer is fitted on one unshuffled pass (a report of its own).
        fit_balancer(stage, record_stream(source, DataReport(plan.bucket_names), shuffle=False,
                                          num_epochs=1, **common))
    stream = record_stream(source, report, shuffle=read.shuffle,
                           shuffle_buffer=plan.shuffle_buffer, num_epochs=plan.num_epochs,
                           strict=read.strict, balancing=stage, **common)
    start = plan.start_batch * plan.batch_size
    if start:
        stream = stream.filter(graph_fn(
            lambda raw: tf.logical_or(raw["status"] == END_OF_EPOCH, raw["position"] >= start)
        ))
    views_fn = plan.views_fn()
    stream = protected_map(stream, views_fn.decode, views_fn.failed,
                           num_parallel_calls=read.num_parallel_calls, cycle_length=16)
    # Sequential: the epoch summary sees every example.
    stream = stream.map(graph_fn(_after_decode(report, read.strict)))
    stream = stream.filter(graph_fn(lambda e: e["keep"]))
    stream = stream.enumerate(start=start).map(
        graph_fn(_finish_fn(plan)), num_parallel_calls=read.num_parallel_calls,
        deterministic=True)
    stream = stream.padded_batch(plan.batch_size, drop_remainder=read.drop_remainder)
    stream = stream.enumerate(start=plan.start_batch).map(
        graph_fn(_batch_fn(plan)), num_parallel_calls=read.num_parallel_calls,
        deterministic=True)
    stream = _with_options(stream.prefetch(tf.data.AUTOTUNE))
    stream.report, stream.source, stream.config = report, source, plan.config
    stream.info = DatasetInfo(plan.config, report, source, stage)
    return stream


def image_text_dataset(path_or_pattern, preprocessor=None, *, batch_size, tokenizer=None,
                       filter_fn=None, balancing=None, balancing_fit_examples=100_000,
                       config=None, **keywords):
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
        filter_fn: a de-biasing (or any) filter: a function of an example dict of
            scalar tensors ("text", "language", "boxes", "box_texts", "source",
            "record") built from tf ops, returning a scalar bool tensor (keep?), a dict of
            rewritten fields ("text", "language", "boxes", "box_texts") or (keep, dict).
            See `filters.GenderedTermRebalancer`.
        balancing: None or a `balancing.MomentMatchingBalancer` (M4 de-biasing, paper
            sec. 2), run after `filter_fn`; annotations from its `annotator` or the
            records' "attributes" / "proxies" columns; an unfitted balancer is fitted
            on the first `balancing_fit_examples` usable records (`balance_stage.py`).
        config: a `config.DataConfig` (or its `to_dict()` form); the keyword arguments
            below override its fields.
        **keywords: the flat arguments of each section (documented on its dataclass):
            `config.ReadConfig`: format, seed, shuffle, shuffle_buffer, num_epochs,
            num_hosts, host_index, start_batch (resume after this many batches, see
            the module docstring of `pipeline.py`), strict, extra_fields (any of
            `EXTRA_FIELDS`), drop_remainder, num_parallel_calls;
            `config.ViewConfig`: views, image_size, num_local_crops, local_crop_size,
            local_crop_scale, teacher_crop_scale, teacher_flip, teacher_color_jitter,
            teacher_jitter_probability, teacher_grayscale_probability, mask_ratio,
            patch_size, naflex_sequence_lengths;
            `config.LocCaConfig`: locca (its `enabled`), locca_options (a dict of its
            other fields: num_bins, sequence_length, task_weights, tasks);
            `config.MixtureConfig`: language_weights, default_language.

    Returns:
        a `tf.data.Dataset` of dicts: "images" (B, H, W, 3) or the NaFlex
        "pixel_patches" / "patch_positions" / "patch_mask"; "token_ids" (B, L) (or
        "texts"); with "local": "local_images" (B, V, h, w, 3) and "teacher_images"
        (B, H, W, 3); with "masked": "tips_mask" (B, N); with LocCa:
        "decoder_token_ids" / "decoder_targets" / "decoder_weights" /
        "decoder_prefix_mask" (B, 3, L) and "locca_regions" (B,); the `extra_fields`.
        `dataset.info` is its `info.DatasetInfo` (config, report, LocCa tasks active,
        balancing statistics); `dataset.report` its `DataReport`, `dataset.source`
        its `readers.Source`, `dataset.config` its `DataConfig`.
    """
    config = DataConfig.from_keywords(config, **keywords)
    plan = _Plan(config, batch_size, preprocessor, tokenizer, filter_fn, balancing,
                 balancing_fit_examples)
    return _build(path_or_pattern, plan)
