"""ACID active curation against uniform sampling in the demo setting (paper sec. 2.5:
"training with ACID reaches a lower held-out loss per learner step than uniform
sampling").

On the synthetic coloured-shapes data (`training/data/synthetic.py`) with the demo's tiny
two-tower model (`training/demo.py`):
1. a reference model is trained longer (`reference_steps`, sigmoid loss) on clean data
   rendered from another seed (or given: e.g. the backbone of a `siglip2 demo` run);
2. two learners start from the same initialization and make the same number of
   optimizer steps (`steps`) with the same batch size, learning rate and schedule:
   "uniform" trains on batches drawn uniformly from the training pool, "acid" draws
   super-batches of `curator.super_batch_size(batch_size)` examples and trains on the
   `keep_ratio` most learnable ones (`SigLIP2Pretrainer(..., curator=ActiveCurator)`);
3. both are scored by the sigmoid loss on held-out clean pairs (another seed), in
   batches of `batch_size` (the loss depends on the batch size).
`noise_fraction` replaces that fraction of the training captions by the caption of
another random example (misaligned pairs, the premise of ACID's learnability score: a
reference that knows the task finds noisy pairs as hard as the learner does).

Only the sigmoid loss is used (ACID scores with it; the paper uses ACID with the
sigmoid loss). `run_acid_comparison` returns (and optionally writes) the figures.

Measured with the defaults (200 learner steps, reference 600 steps; held-out sigmoid
loss, uniform -> ACID; CPU, JAX): with half the training pairs noisy, seeds 0 / 1 / 2:
4.038 -> 2.759, 3.805 -> 3.160, 3.798 -> 3.070 (a fifth noisy, seed 1: 3.243 -> 2.968).
On clean data the gain is not robust: at 200 steps 2.647 -> 2.611, 2.669 -> 2.923,
2.661 -> 2.985 (ACID worse for seeds 1 and 2); at 400 steps 2.161 -> 2.158,
2.301 -> 2.174, 2.187 -> 2.169. `tests/training/test_curation.py` asserts the noisy case.
"""

import json
import os
import time

import keras
import numpy as np
from keras import ops

from keras_siglip2.checks import check_int, check_positive_int
from keras_siglip2.models import SigLIP2Backbone
from keras_siglip2.preprocessing import SigLIP2Tokenizer
from keras_siglip2.training.curation import ActiveCurator
from keras_siglip2.training.data import synthetic
from keras_siglip2.training.data.synthetic import synthetic_dataset, to_model_range
from keras_siglip2.training.pretrainer import SigLIP2Pretrainer
from keras_siglip2.training.recipes.demo import DEMO_DEFAULTS, build_demo_backbone

# The demo's model, optimizer and batch, with ACID's own run lengths and data sizes.
ACID_DEFAULTS = dict(
    {k: DEMO_DEFAULTS[k] for k in ("batch_size", "image_size", "patch_size", "width",
                                   "num_layers", "num_heads", "sequence_length",
                                   "learning_rate")},
    steps=200,
    reference_steps=600,
    keep_ratio=0.5,
    num_examples=2000,
    num_heldout=256,
    noise_fraction=0.0,
)


def corrupt_captions(examples, noise_fraction, seed):
    """A copy of `generate_examples`' output where a `noise_fraction` of the examples
    (drawn with `seed`) get the caption of another example of that subset (a cyclic
    shift of a random order, so none keeps its own); also returns the bool noisy mask."""
    if not 0.0 <= float(noise_fraction) <= 1.0:
        raise ValueError(f"`noise_fraction` must lie in [0, 1]; got {noise_fraction!r}.")
    rng = np.random.default_rng(seed)
    n = len(examples["captions"])
    noisy = np.zeros((n,), bool)
    count = int(round(float(noise_fraction) * n))
    out = dict(examples)
    if count < 2:
        return out, noisy
    chosen = rng.permutation(n)[:count]
    noisy[chosen] = True
    captions = np.array(examples["captions"], dtype=object)
    captions[chosen] = captions[np.roll(chosen, 1)]
    out["captions"] = captions
    return out, noisy


def heldout_sigmoid_loss(backbone, batches):
    """Mean over `batches` ({"images", "token_ids"} dicts) of the sigmoid loss of
    `backbone` on each batch."""
    losses = [float(ops.convert_to_numpy(ops.mean(ActiveCurator.example_losses(backbone, b))))
              for b in batches]
    return float(np.mean(losses))


def _vocabulary_size(proto):
    import sentencepiece as spm  # lazy: optional heavy dependency (the tokenizer's)

    return spm.SentencePieceProcessor(model_proto=proto).vocab_size()


def _batches(examples, tokenizer, batch_size):
    n = (len(examples["captions"]) // batch_size) * batch_size
    token_ids = np.asarray(tokenizer([str(c) for c in examples["captions"][:n]]), np.int32)
    images = to_model_range(examples["images"][:n])
    return [{"images": images[i:i + batch_size], "token_ids": token_ids[i:i + batch_size]}
            for i in range(0, n, batch_size)]


def _train(backbone, tokenizer, examples, steps, batch_size, learning_rate, seed,
           curator=None):
    """`steps` optimizer steps of the sigmoid loss; with `curator`, on the curated
    half of super-batches. Returns the fit time in seconds."""
    draw = batch_size if curator is None else curator.super_batch_size(batch_size)
    dataset = synthetic_dataset(tokenizer, draw, seed=seed, num_local_views=0, locca=False,
                                examples=examples)
    pretrainer = SigLIP2Pretrainer(backbone, decoder=None, self_distillation=False,
                                   masked_prediction=False, seed=seed, curator=curator)
    pretrainer.compile(learning_rate=learning_rate, total_steps=steps)
    start = time.time()
    pretrainer.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return time.time() - start


def _acid_config(seed, overrides):
    unknown = sorted(set(overrides) - set(ACID_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown options {unknown}; known: {sorted(ACID_DEFAULTS)}.")
    cfg = {**ACID_DEFAULTS, **overrides}
    for name in ("steps", "reference_steps", "batch_size", "num_examples", "num_heldout"):
        check_positive_int(name, cfg[name])
    check_int("seed", seed, minimum=0)
    return cfg


def _reference(reference, reference_init, tokenizer, cfg, seed, timings):
    """(frozen reference backbone, where it comes from): `reference_init` trained on
    clean data when no `reference` is given, else the given backbone / preset."""
    if reference is None:
        clean = synthetic.generate_examples(cfg["num_examples"], cfg["image_size"],
                                            seed=seed + 1)
        timings["reference_train_s"] = _train(
            reference_init, tokenizer, clean, cfg["reference_steps"], cfg["batch_size"],
            cfg["learning_rate"], seed + 1,
        )
        return reference_init, f"trained {cfg['reference_steps']} steps (sigmoid loss)"
    if isinstance(reference, (str, os.PathLike)):
        source = os.fspath(reference)
        reference = SigLIP2Backbone.from_preset(source)
    else:
        source = "given"
    reference.trainable = False
    return reference, source


def _report(summary, out, verbose):
    """Prints the held-out losses (`verbose`) and writes the summary to `out`."""
    cfg, losses = summary["config"], summary["heldout_loss"]
    if verbose:
        print(
            f"Held-out sigmoid loss after {cfg['steps']} learner steps (batch "
            f"{cfg['batch_size']}): uniform {losses['uniform']:.4f}, ACID {losses['acid']:.4f} "
            f"(init {losses['init']:.4f}, reference {losses['reference']:.4f}; "
            f"noise fraction {cfg['noise_fraction']})."
        )
    if out is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(summary, f, indent=2)


def run_acid_comparison(seed=0, reference=None, out=None, verbose=False, **overrides):
    """Trains the reference (unless given), then the uniform and the ACID learner;
    returns the summary dict (written to `out` as JSON when given).

    Args:
        seed: int; the data (training pool `seed`, reference data `seed + 1`, held-out
            `seed + 10_000`), the initializations and the orders follow from it.
        reference: None (train one for `reference_steps`), or a trained
            `SigLIP2Backbone` / preset directory with the synthetic tokenizer's
            vocabulary (e.g. `siglip2 demo`'s `DIR/preset`).
        out: optional path of a JSON file for the summary.
        overrides: any key of `ACID_DEFAULTS`.

    The summary has "heldout_loss" {"init", "uniform", "acid", "reference"}, "acid_gain"
    (uniform - acid), "steps", "seed", "config" and "timings_s".
    """
    cfg = _acid_config(seed, overrides)
    t0 = time.time()
    timings = {}
    proto = synthetic.train_tokenizer()
    size = cfg["image_size"]

    def fresh_backbone(init_seed):
        keras.utils.set_random_seed(init_seed)
        return build_demo_backbone(
            _vocabulary_size(proto), size, cfg["patch_size"], cfg["width"],
            cfg["num_layers"], cfg["num_heads"], cfg["sequence_length"],
        )

    # Every model is built before the tokenizer: `keras.utils.set_random_seed` resets
    # TensorFlow's global seed, after which an existing tokenizer's SentencePiece
    # resource is no longer found inside tf.data.
    reference_init = fresh_backbone(seed + 1) if reference is None else None
    learners = [fresh_backbone(seed + 2) for _ in range(2)]
    learners[1].set_weights(learners[0].get_weights())
    tokenizer = SigLIP2Tokenizer(proto=proto, sequence_length=cfg["sequence_length"])

    pool = synthetic.generate_examples(cfg["num_examples"], size, seed=seed)
    pool, noisy = corrupt_captions(pool, cfg["noise_fraction"], seed + 7)
    heldout = _batches(
        synthetic.generate_examples(cfg["num_heldout"], size, seed=seed + 10_000),
        tokenizer, cfg["batch_size"],
    )
    if not heldout:
        raise ValueError("`num_heldout` must be at least `batch_size`.")
    reference, reference_source = _reference(reference, reference_init, tokenizer, cfg,
                                             seed, timings)

    # --- learners from one initialization
    uniform_learner, acid_learner = learners
    losses = {"init": heldout_sigmoid_loss(uniform_learner, heldout),
              "reference": heldout_sigmoid_loss(reference, heldout)}
    timings["uniform_train_s"] = _train(uniform_learner, tokenizer, pool, cfg["steps"],
                                        cfg["batch_size"], cfg["learning_rate"], seed + 3)
    losses["uniform"] = heldout_sigmoid_loss(uniform_learner, heldout)
    curator = ActiveCurator(reference, keep_ratio=cfg["keep_ratio"])
    timings["acid_train_s"] = _train(acid_learner, tokenizer, pool, cfg["steps"],
                                     cfg["batch_size"], cfg["learning_rate"], seed + 3,
                                     curator=curator)
    losses["acid"] = heldout_sigmoid_loss(acid_learner, heldout)
    timings["total_s"] = time.time() - t0
    summary = {
        "heldout_loss": losses,
        "acid_gain": losses["uniform"] - losses["acid"],
        "steps": cfg["steps"],
        "batch_size": cfg["batch_size"],
        "super_batch_size": curator.super_batch_size(cfg["batch_size"]),
        "noisy_training_pairs": int(noisy.sum()),
        "heldout_pairs": len(heldout) * cfg["batch_size"],
        "reference": reference_source,
        "seed": seed,
        "config": cfg,
        "timings_s": timings,
    }
    _report(summary, out, verbose)
    return summary
