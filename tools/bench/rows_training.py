"""Row 4: the training step, sigmoid-only against keras-hub's fit and the full recipe against sigmoid-only, with the input pipeline's throughput."""

import math
import os

import numpy as np

from tools.bench.common import NotAvailable, _now, alternate, compute_dtype, entry, free_memory, keras_hub_backbone, ours_from_keras_hub, paired_ratio, progress, require, row, text_flops, unavailable, vision_flops, xla_flops




@row("training", "Training step: sigmoid-only vs keras-hub fit; full recipe vs sigmoid-only")
def row_training(cfg, ctx):
    import keras

    spec = cfg["training"]
    vision, text, batch = spec["vision"], spec["text"], spec["batch"]
    dtype = compute_dtype()
    keras.utils.set_random_seed(0)
    progress(f"training: building {spec['arch']}")
    kh = keras_hub_backbone(vision, text, dtype=dtype)
    ours = ours_from_keras_hub(kh, dtype=dtype)
    # Both with their defaults: AdamW(1e-3, weight_decay=1e-4) and the sigmoid loss,
    # labels built in compute_loss (fit takes the inputs only).
    kh.compile()
    ours.compile()
    rng = np.random.RandomState(0)
    size = vision["image_size"]
    x = {"images": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
         "token_ids": rng.randint(0, text["vocabulary_size"],
                                  (batch, text["max_sequence_length"])).astype(np.int32)}
    fit_ours = "keras_siglip2 SigLIP2Backbone.fit step (sigmoid)"
    fit_kh = "keras-hub SigLIPBackbone.fit step"
    contenders = {
        fit_ours: lambda: ours.train_on_batch(x),
        fit_kh: lambda: kh.train_on_batch(x),
    }
    pretrainer_note, pretrainers = None, {}
    try:
        runs, pretrainers = _pretrainer_contenders(ours, x, spec, rng)
        contenders.update(runs)
    except NotAvailable as e:
        pretrainer_note = str(e)
    progress(f"training: timing {len(contenders)} steps x {spec['repeats']} rounds")
    timing = alternate(contenders, spec["repeats"], cfg["min_seconds"])
    m = timing["median_s"]
    entries = []
    for name in m:
        entries.append(entry(name, batch / m[name], "examples/s",
                             note=f"batch {batch}; {m[name]:.2f} s per step; first call "
                                  f"{timing['first_s'][name]:.1f} s"))
    for name in (fit_ours, PRETRAINER_SIGMOID):
        if name in m:
            entries.append(entry(f"sigmoid-only step: {name} / keras-hub fit", batch / m[name],
                                 "examples/s", ratio=paired_ratio(timing, name, fit_kh),
                                 vs=fit_kh, target=(">=", 1.0)))
    if PRETRAINER_FULL in m and PRETRAINER_SIGMOID in m:
        entries.append(entry("full-recipe step time / sigmoid-only step time",
                             m[PRETRAINER_FULL], "s per step",
                             ratio=1.0 / paired_ratio(timing, PRETRAINER_FULL,
                                                      PRETRAINER_SIGMOID),
                             vs=PRETRAINER_SIGMOID, target=("<=", 2.5)))
        time_ratio = entries[-1]["ratio"]
        flops = {name: jax_train_step_flops(*pretrainers[name])
                 for name in (PRETRAINER_SIGMOID, PRETRAINER_FULL)}
        if None not in flops.values():
            work_ratio = flops[PRETRAINER_FULL] / flops[PRETRAINER_SIGMOID]
            entries.append(entry(
                "full-recipe / sigmoid-only step FLOPs (XLA cost analysis)",
                flops[PRETRAINER_FULL] / 1e9, "GFLOPs per step", ratio=work_ratio,
                vs=PRETRAINER_SIGMOID,
                note=f"sigmoid-only step {flops[PRETRAINER_SIGMOID] / 1e9:.1f} GFLOPs; "
                     f"time ratio / FLOP ratio = {time_ratio / work_ratio:.2f} (1 = the "
                     "extra losses cost what their arithmetic costs)"))
        entries += _curriculum_entries(timing, time_ratio)
        entries += _breakdown_entries(pretrainers, flops, spec)
        crops = spec["local_crops"]
        if crops < 8:  # each extra crop: one more student forward + backward on a crop
            v, t = vision_flops(vision), text_flops(text)
            area = (spec["local_image_size"] / vision["image_size"]) ** 2
            entries.append(entry(
                "full-recipe / sigmoid-only step time, 8 local crops (estimate)", None, "",
                ratio=time_ratio + (8 - crops) * area * v / (v + t), vs=PRETRAINER_SIGMOID,
                target=("<=", 2.5),
                note=f"measured ratio + {8 - crops} x crop area x image FLOPs / (image + "
                     "text FLOPs)"))
    else:
        entries.append(unavailable("full-recipe step / sigmoid-only step", pretrainer_note))
    step_rates = {k: batch / m[k] for k in (PRETRAINER_SIGMOID, PRETRAINER_FULL, fit_ours)
                  if k in m}
    del contenders, timing
    free_memory()
    try:
        entries += _input_pipeline_entries(spec, step_rates)
    except NotAvailable as e:
        entries.append(unavailable("input pipeline images/s vs step rate", str(e)))
    ctx["notes"].setdefault("training", []).append(
        f"{spec['arch']}, batch {batch}, {dtype}; same weights in every contender "
        "(converted from keras-hub). The fit steps are Keras `train_on_batch` (the compiled "
        "train step `fit` runs) with AdamW(1e-3, weight decay 1e-4) and the sigmoid loss "
        "on the (B, B) logits. SigLIP2Pretrainer steps use its default optimizer "
        "(siglip2_optimizer: AdamW + clipnorm 1 + warmup/cosine); the full recipe is "
        "sigmoid + LocCa (decoder sized by locca_decoder_for) + SILC with "
        f"{spec['local_crops']} local crops of {spec['local_image_size']} px "
        "(local_image_size: the student runs on them with its position embedding resized, "
        "as DINO / SILC students do; the input pipeline makes the same crops) + TIPS, "
        "after start_teacher_stage() (the 80 % stage); sigmoid + LocCa is the recipe "
        "before that stage; LocCa fields are random token ids. The FLOP breakdown lowers "
        "(never runs) the train steps of pretrainers with one added term each.")
    free_memory()
    return entries


PRETRAINER_SIGMOID = "SigLIP2Pretrainer step (sigmoid only)"
PRETRAINER_LOCCA = "SigLIP2Pretrainer step (sigmoid + LocCa)"
PRETRAINER_FULL = "SigLIP2Pretrainer step (full recipe)"
# Lowered for their FLOPs only (never run): one teacher loss each, after the 80 % switch.
SIGMOID_SILC = "sigmoid + SILC"
SIGMOID_TIPS = "sigmoid + TIPS"
# The paper's curriculum (sec. 2.3): SILC and TIPS join at 80 % of training.
TEACHER_STAGE_FRACTION = 0.8


def curriculum_cost_ratio(locca_ratio, full_ratio, switch=TEACHER_STAGE_FRACTION):
    """Whole-run cost relative to a sigmoid-only run when the steps before `switch`
    (a fraction of training) cost `locca_ratio` sigmoid-only steps each (sigmoid +
    LocCa) and the rest `full_ratio` (+ SILC + TIPS)."""
    if not 0.0 <= switch <= 1.0:
        raise ValueError(f"`switch` must be a fraction in [0, 1]; got {switch!r}.")
    return switch * locca_ratio + (1.0 - switch) * full_ratio


def locca_projection_flops(batch, length, width, vocabulary, tasks=3):
    """FLOPs of the LocCa decoder's output projection in one train step: `tasks`
    sequences of `length` tokens per example, each token a width x vocabulary matmul
    (2 FLOPs per multiply-add), forward + the two backward matmuls (x 3)."""
    return tasks * batch * length * width * vocabulary * 2 * 3


def chunked_projection_flops(batch, length, width, vocabulary, chunk, tasks=3):
    """(executed, counted): FLOPs of the LocCa projection in the pretrainer's chunked
    cross-entropy (`token_cross_entropy_from_features`) and the part of it XLA's cost
    analysis counts. With V > chunk it computes n = ceil(V / chunk) blocks of
    ceil(V / n) columns, each with 4 matmuls (forward; in the backward pass the
    recomputed logits and the two gradients), and the cost analysis counts a
    `lax.scan` body once, i.e. one block; with V <= chunk it is the plain projection
    (3 matmuls), counted whole."""
    count = math.ceil(vocabulary / min(chunk, vocabulary))
    if count == 1:
        plain = locca_projection_flops(batch, length, width, vocabulary, tasks=tasks)
        return plain, plain
    per_block = tasks * batch * length * width * math.ceil(vocabulary / count) * 2 * 4
    return count * per_block, per_block


def _pretrainer_contenders(backbone, x, spec, rng):
    """Train steps of SigLIP2Pretrainer, sigmoid only, sigmoid + LocCa and full recipe
    (SILC / TIPS switched on), on `backbone` (shared: only the step's speed is measured);
    plus, for their FLOPs only, sigmoid + SILC and sigmoid + TIPS pretrainers.
    Returns ({name: run()}, {name: (pretrainer, batch)})."""
    pretrainer_cls = require("keras_siglip2.training.pretrainer", "SigLIP2Pretrainer")
    batch = x["images"].shape[0]
    local_size = spec["local_image_size"]

    def make(decoder, silc, tips):
        model = pretrainer_cls(backbone, decoder=decoder, self_distillation=silc,
                               masked_prediction=tips, seed=0,
                               local_image_size=local_size if silc else None)
        model.compile(total_steps=10_000)
        if silc or tips:
            model.start_teacher_stage()
        return model

    sigmoid, locca = make(None, False, False), make("locca", False, False)
    full = make("locca", True, True)
    length = x["token_ids"].shape[1]
    vocab = full.decoder.vocabulary_size
    # The recipe's batch: LocCa's three tasks per example (B, 3, L), the teacher's
    # augmented global view, SILC's local crops.
    locca_x = dict(
        x,
        decoder_token_ids=rng.randint(0, vocab, (batch, 3, length)).astype(np.int32),
        decoder_targets=rng.randint(0, vocab, (batch, 3, length)).astype(np.int32),
        decoder_weights=np.ones((batch, 3, length), np.float32),
    )
    teacher_x = dict(
        x,
        teacher_images=np.flip(x["images"], axis=2).copy(),
        local_images=rng.uniform(
            -1, 1, (batch, spec["local_crops"], local_size, local_size, 3)).astype(np.float32),
    )
    full_x = dict(locca_x, **teacher_x)
    contenders = {PRETRAINER_SIGMOID: lambda: sigmoid.train_on_batch(x),
                  PRETRAINER_LOCCA: lambda: locca.train_on_batch(locca_x),
                  PRETRAINER_FULL: lambda: full.train_on_batch(full_x)}
    models = {PRETRAINER_SIGMOID: (sigmoid, x), PRETRAINER_LOCCA: (locca, locca_x),
              PRETRAINER_FULL: (full, full_x),
              SIGMOID_SILC: (make(None, True, False), teacher_x),
              SIGMOID_TIPS: (make(None, False, True), teacher_x)}
    return contenders, models


def _curriculum_entries(timing, full_ratio):
    """The sigmoid + LocCa step time against sigmoid-only (the steps before 80 %) and
    the whole-run ratio it gives with the measured full-recipe ratio."""
    if PRETRAINER_LOCCA not in timing["median_s"]:
        return []
    locca_ratio = paired_ratio(timing, PRETRAINER_SIGMOID, PRETRAINER_LOCCA)
    whole = curriculum_cost_ratio(locca_ratio, full_ratio)
    share = TEACHER_STAGE_FRACTION
    return [
        entry("sigmoid + LocCa step time / sigmoid-only step time",
              timing["median_s"][PRETRAINER_LOCCA], "s per step", ratio=locca_ratio,
              vs=PRETRAINER_SIGMOID,
              note=f"the recipe's steps before {share:.0%} of training (SILC / TIPS off)"),
        entry("whole-run cost ratio under the paper's curriculum (derived)", None, "",
              ratio=whole, vs="a sigmoid-only run",
              note=f"derived from the measured step times: {share:g} x {locca_ratio:.2f} "
                   f"(sigmoid + LocCa) + {1 - share:.1g} x {full_ratio:.2f} (full recipe), "
                   f"SILC / TIPS from {share:.0%} of training (paper sec. 2.3)"),
    ]


def _breakdown_entries(pretrainers, flops, spec):
    """Step FLOPs per added loss term against sigmoid-only (XLA cost analysis of the
    lowered steps), the LocCa output projection's analytic FLOPs (plain, and as the
    chunked loss executes it) and what the cost analysis leaves out of its scan."""
    base, full = flops[PRETRAINER_SIGMOID], flops[PRETRAINER_FULL]
    if base is None or full is None:
        return []
    crops = spec["local_crops"]
    terms = {"sigmoid + LocCa (3 tasks)": PRETRAINER_LOCCA,
             f"sigmoid + SILC (teacher view + {crops} local crops of "
             f"{spec['local_image_size']} px)": SIGMOID_SILC,
             "sigmoid + TIPS": SIGMOID_TIPS}
    counted = {label: jax_train_step_flops(*pretrainers[name])
               for label, name in terms.items()}
    entries, extra = [], full - base
    for label, value in counted.items():
        if value is not None:
            entries.append(entry(
                f"step FLOPs breakdown: {label} / sigmoid-only", value / 1e9,
                "GFLOPs per step", ratio=value / base, vs=PRETRAINER_SIGMOID,
                note=f"+{(value - base) / 1e9:.1f} GFLOPs over sigmoid-only "
                     f"({(value - base) / extra:.0%} of the full recipe's extra "
                     f"{extra / 1e9:.1f} GFLOPs)"))
    locca_model, locca_x = pretrainers[PRETRAINER_LOCCA]
    increment = counted["sigmoid + LocCa (3 tasks)"]
    decoder = locca_model.decoder
    b, tasks, length = locca_x["decoder_token_ids"].shape
    projection = locca_projection_flops(b, length, decoder.hidden_dim,
                                        decoder.vocabulary_size, tasks=tasks)
    if increment is None:
        return entries
    chunk = require("keras_siglip2.training.losses.locca", "DEFAULT_VOCABULARY_CHUNK")
    executed, one_block = chunked_projection_flops(b, length, decoder.hidden_dim,
                                                 decoder.vocabulary_size, chunk, tasks=tasks)
    entries.append(entry(
        "LocCa vocabulary projection FLOPs (analytic, fwd + bwd)", projection / 1e9,
        "GFLOPs per step", ratio=projection / (increment - base),
        vs="the measured LocCa increment",
        note=f"{tasks} tasks x B {b} x L {length} x width {decoder.hidden_dim} x "
             f"(vocabulary + bins) {decoder.vocabulary_size:,} x 2 x 3; measured "
             f"LocCa increment {(increment - base) / 1e9:.1f} GFLOPs"))
    missed = executed - one_block  # the scan iterations XLA's cost analysis leaves out
    blocks = math.ceil(decoder.vocabulary_size / min(chunk, decoder.vocabulary_size))
    entries.append(entry(
        "LocCa projection as executed by the chunked loss (analytic)", executed / 1e9,
        "GFLOPs per step", ratio=executed / projection, vs="the plain 3-matmul projection",
        note=f"{blocks} vocabulary blocks of {math.ceil(decoder.vocabulary_size / blocks):,}"
             " x 4 matmuls (the backward pass recomputes the logits). XLA's "
             f"cost analysis counts a scan body once ({one_block / 1e9:.1f} GFLOPs): the "
             "step FLOPs above leave out "
             f"{missed / 1e9:.1f} GFLOPs; with them sigmoid + LocCa is "
             f"{(increment + missed) / base:.2f}x and the full recipe "
             f"{(full + missed) / base:.2f}x sigmoid-only"))
    return entries


def jax_train_step_flops(model, x):
    """FLOPs of one compiled-by-fit train step of `model` on batch `x` (JAX; a model
    never run gets its optimizer built first, nothing is executed): XLA's cost
    analysis of the lowered step (before optimization; includes the backward pass and
    the optimizer update). Uses Keras' JAX trainer state layout (`_get_jax_state`), a
    private API: None if absent."""
    import jax
    import keras

    get_state = getattr(model, "_get_jax_state", None)
    if get_state is None or keras.backend.backend() != "jax":
        return None
    if not model.optimizer.built:  # a model never run: lowering needs its slots
        model.optimizer.build(model.trainable_variables)
    state = get_state(trainable_variables=True, non_trainable_variables=True,
                      optimizer_variables=True, metrics_variables=True,
                      purge_model_variables=False)
    return xla_flops(jax.jit(model.train_step).lower(state, (x, None, None)))


def _input_pipeline_entries(spec, step_rates):
    """Images/s of `image_text_dataset` (synthetic JPEGs on disk, the real tokenizer
    class with a tiny SentencePiece model) for the sigmoid-only and full-recipe views."""
    import tempfile

    pipeline = require("keras_siglip2.training.data.pipeline", "image_text_dataset")
    sources = require("keras_siglip2.training.data.sources")
    synthetic = require("keras_siglip2.training.data.synthetic")
    from keras_siglip2.preprocessing import SigLIP2Tokenizer

    size = spec["vision"]["image_size"]
    batch = spec["batch"]
    data = synthetic.generate_examples(spec["pipeline_images"], image_size=spec["source_size"])
    examples = [
        {"image": data["images"][i], "caption": data["captions"][i],
         "boxes": data["boxes"][i][: data["num_objects"][i]],
         "box_texts": list(data["region_captions"][i][: data["num_objects"][i]])}
        for i in range(len(data["images"]))
    ]
    tokenizer = SigLIP2Tokenizer(proto=synthetic.train_tokenizer(),
                                 sequence_length=spec["text"]["max_sequence_length"])
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        path = sources.write_csv(os.path.join(tmp, "data.jsonl"), examples,
                                 image_format="jpeg")
        setups = {
            "sigmoid-only views": (dict(views=("image",)), PRETRAINER_SIGMOID),
            "full-recipe views (+ local crops, TIPS mask, LocCa)": (
                dict(views=("image", "local", "masked"), locca=True,
                     num_local_crops=spec["local_crops"],
                     local_crop_size=spec["local_image_size"],
                     patch_size=spec["vision"]["patch_size"]), PRETRAINER_FULL),
        }
        for name, (options, step) in setups.items():
            dataset = pipeline(path, batch_size=batch, tokenizer=tokenizer, image_size=size,
                               seed=0, **options)
            iterator = iter(dataset)
            next(iterator)  # warm-up: graph tracing, file reading
            t0 = _now()
            for _ in range(spec["pipeline_batches"]):
                next(iterator)
            rate = spec["pipeline_batches"] * batch / (_now() - t0)
            step_rate = step_rates.get(step) or step_rates.get(
                "keras_siglip2 SigLIP2Backbone.fit step (sigmoid)")
            entries.append(entry(f"input pipeline, {name}", rate, "images/s",
                                 ratio=rate / step_rate if step_rate else None,
                                 vs=f"{step} rate" if step_rate else None,
                                 note=f"JPEG {spec['source_size']} px -> {size} px, tf.data "
                                      "on the same cores; > 1 = the pipeline keeps up"))
            del iterator, dataset
    return entries
