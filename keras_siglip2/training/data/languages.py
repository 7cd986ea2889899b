"""The language mixture of the SigLIP 2 training data (paper sec. 2, "training data":
90 % English / 10 % other languages): checking the mixture weights and mapping each
record's language tag to its bucket, as `tf` ops."""

import math

import tensorflow as tf

PAPER_LANGUAGE_WEIGHTS = {"en": 0.9, "other": 0.1}


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
