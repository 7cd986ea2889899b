"""De-biasing filters for the image-text pipeline (paper sec. 2, training data: SigLIP 2
trains on WebLI with the de-biasing filters of Alabdulmohsin et al. 2024, "CLIP the
Bias", which reduce both first-order biases (how often each group appears) and
second-order ones (associations between a group and other content)).

The pipeline's `filter_fn` hook takes any callable of an example dict of scalar
tensors ("text", "language", "boxes", "box_texts", "source", "record") that returns a
keep decision, rewritten fields, or both (see `pipeline.image_text_dataset`). This
module ships one example, `GenderedTermRebalancer`, working on English captions:

- mode "drop" (first-order balance): captions that mention only one gender group are
  kept with a per-group probability, e.g. chosen by `from_texts` so that both groups
  are equally frequent in expectation;
- mode "swap" (counterfactual augmentation, which also weakens second-order
  associations): with probability `swap_probability`, every gendered term of a caption
  is replaced by its counterpart ("a man and his dog" -> "a woman and her dog").

Decisions are random but deterministic: a function of `seed` and of the example
(caption, shard, record), the same in every epoch and on every host. The paper's own
de-biasing is the moment matching of "CLIP the Bias" (`balancing.MomentMatchingBalancer`,
which bounds both biases over user-given attribute and proxy annotations); this
rebalancer is a simple built-in for English captions, and its word lists serve as the
attribute annotator of the balancer (`balancing.keyword_annotator`).
"""

import numpy as np
import tensorflow as tf

# Each word and its counterpart. Not one-to-one: "her" is both "him" and "his" (we map
# it to "his", the possessive being the common case in captions).
MALE_TO_FEMALE = {
    "man": "woman", "men": "women", "boy": "girl", "boys": "girls", "he": "she",
    "him": "her", "his": "her", "himself": "herself", "male": "female",
    "males": "females", "father": "mother", "fathers": "mothers", "dad": "mom",
    "dads": "moms", "son": "daughter", "sons": "daughters", "brother": "sister",
    "brothers": "sisters", "husband": "wife", "husbands": "wives",
    "gentleman": "lady", "gentlemen": "ladies", "king": "queen", "kings": "queens",
    "uncle": "aunt", "uncles": "aunts", "nephew": "niece", "nephews": "nieces",
    "grandfather": "grandmother", "grandson": "granddaughter",
    "boyfriend": "girlfriend", "groom": "bride", "actor": "actress", "actors": "actresses",
    "waiter": "waitress", "businessman": "businesswoman", "businessmen": "businesswomen",
    "mr": "mrs", "guy": "gal", "guys": "gals", "prince": "princess",
}
FEMALE_TO_MALE = {f: m for m, f in MALE_TO_FEMALE.items() if f != "her"}
FEMALE_TO_MALE["her"] = "his"
FEMALE_TO_MALE["mrs"] = "mr"
FEMALE_TO_MALE["ms"] = "mr"
MALE_TERMS = tuple(MALE_TO_FEMALE)
FEMALE_TERMS = tuple(FEMALE_TO_MALE)
SWAPS = {**MALE_TO_FEMALE, **FEMALE_TO_MALE}


def _word_pattern(words):
    return r"(?is).*\b(" + "|".join(sorted(words, key=len, reverse=True)) + r")\b.*"


def gender_mentions(texts):
    """(mentions_male, mentions_female) bool tensors for a string tensor of captions
    (whole words, any case)."""
    texts = tf.convert_to_tensor(texts, tf.string)
    return (tf.strings.regex_full_match(texts, _word_pattern(MALE_TERMS)),
            tf.strings.regex_full_match(texts, _word_pattern(FEMALE_TERMS)))


def swap_gendered_terms(texts):
    """Replaces every gendered word of `texts` (string tensor) by its counterpart
    (`SWAPS`), keeping a leading capital ("He" -> "She"); other casings become lower
    case. Two passes through placeholders, so that "he" -> "she" -> "he" cannot
    happen."""
    texts = tf.convert_to_tensor(texts, tf.string)
    words = sorted(SWAPS)
    for i, word in enumerate(words):
        texts = tf.strings.regex_replace(texts, rf"\b{word.capitalize()}\b", f"\x01C{i}\x02")
        texts = tf.strings.regex_replace(texts, rf"(?i)\b{word}\b", f"\x01L{i}\x02")
    for i, word in enumerate(words):
        target = SWAPS[word]
        texts = tf.strings.regex_replace(texts, f"\x01C{i}\x02", target.capitalize())
        texts = tf.strings.regex_replace(texts, f"\x01L{i}\x02", target)
    return texts


class GenderedTermRebalancer:
    """A `filter_fn` that rebalances gendered terms in captions (see the module
    docstring).

    Args:
        mode: "drop" (keep one-group captions with `keep_probabilities`) or "swap"
            (swap gendered terms with `swap_probability`).
        keep_probabilities: mode "drop": {"male": p, "female": q}, the probability of
            keeping a caption that mentions only that group (captions with both or
            neither are always kept). Default: keep all; see `from_texts`.
        swap_probability: mode "swap": probability of swapping a caption's terms (0.5
            balances the two groups in expectation).
        seed: int, for the random decisions.

    Example:
    ```python
    debias = GenderedTermRebalancer.from_texts(sample_captions, mode="drop")
    ds = image_text_dataset("train.csv", preprocessor, batch_size=32, filter_fn=debias)
    ```
    """

    MODES = ("drop", "swap")

    def __init__(self, mode="swap", keep_probabilities=None, swap_probability=0.5, seed=0):
        if mode not in self.MODES:
            raise ValueError(f"`mode` must be one of {self.MODES}; got mode={mode!r}.")
        keep = {"male": 1.0, "female": 1.0, **(keep_probabilities or {})}
        if set(keep) != {"male", "female"}:
            raise ValueError("`keep_probabilities` takes the keys 'male' and 'female'; got "
                             f"{sorted(keep_probabilities)}.")
        for name, value in list(keep.items()) + [("swap_probability", swap_probability)]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0.0 <= value <= 1.0
            ):
                raise ValueError(f"Probability {name!r} must be in [0, 1]; got {value!r}.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"`seed` must be an int; got {seed!r}.")
        self.mode = mode
        self.keep_probabilities = {k: float(v) for k, v in keep.items()}
        self.swap_probability = float(swap_probability)
        self.seed = int(seed)

    @classmethod
    def from_texts(cls, texts, mode="drop", seed=0):
        """A rebalancer fitted to a sample of captions: "drop" keeps every caption of
        the rarer group and the more frequent group's one-group captions with the
        probability that equalizes the counts; "swap" uses probability 0.5."""
        if mode == "swap":
            return cls("swap", swap_probability=0.5, seed=seed)
        male, female = (np.asarray(x) for x in gender_mentions(list(texts)))
        only_male = int(np.sum(male & ~female))
        only_female = int(np.sum(female & ~male))
        keep = {"male": 1.0, "female": 1.0}
        if only_male > only_female:
            keep["male"] = only_female / only_male
        elif only_female > only_male:
            keep["female"] = only_male / only_female
        return cls(mode, keep_probabilities=keep, seed=seed)

    def _uniform(self, example):
        key = tf.strings.join([example["text"], "\x00", example["source"], "\x00",
                               tf.strings.as_string(example["record"])])
        hashed = tf.strings.to_hash_bucket_fast(key, 2**31 - 1)
        return tf.random.stateless_uniform([], seed=tf.stack([tf.cast(self.seed, tf.int64), hashed]))

    def __call__(self, example):
        text = example["text"]
        draw = self._uniform(example)
        if self.mode == "swap":
            swapped = tf.cond(draw < self.swap_probability,
                              lambda: swap_gendered_terms(text), lambda: text)
            return tf.constant(True), {"text": swapped}
        male, female = gender_mentions(text)
        keep_p = tf.where(
            tf.logical_and(male, tf.logical_not(female)), self.keep_probabilities["male"],
            tf.where(tf.logical_and(female, tf.logical_not(male)),
                     self.keep_probabilities["female"], 1.0),
        )
        return draw < keep_p

    def __repr__(self):
        return (f"GenderedTermRebalancer(mode={self.mode!r}, keep_probabilities="
                f"{self.keep_probabilities}, swap_probability={self.swap_probability}, "
                f"seed={self.seed})")
