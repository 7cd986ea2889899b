"""Row "precision" (issue 19 item 2): SigLIP2Pretrainer under the keras dtype policy
"mixed_bfloat16" (bfloat16 compute, float32 variables; the losses, logit scale / bias,
normalizations and EMA teacher in float32 as the pretrainer keeps them) against
"float32": the paired train-step time at one model size, and the training loss of the
two precisions over the same 50 optimizer steps from the same weights on the same
fixed synthetic batches (the full recipe of paper sec. 2.1-2.3, SILC / TIPS on)."""

import numpy as np

from tools.bench.common import alternate, entry, free_memory, paired_ratio, progress, require, row

POLICIES = ("float32", "mixed_bfloat16")


def loss_agreement(reference, other):
    """Figures of two per-step loss curves of equal length: max |other - reference|
    over the steps, and |other - reference| / |reference| at the last step."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape or reference.ndim != 1 or not len(reference):
        raise ValueError("`reference` and `other` must be 1-D loss curves of the same "
                         f"length; got shapes {reference.shape} and {other.shape}.")
    diff = np.abs(other - reference)
    return float(diff.max()), float(diff[-1] / abs(reference[-1]))


def _pretrainers(vision, text, recipe, seed=0):
    """{policy: SigLIP2Pretrainer} with the same float32 starting weights. The dtype
    policy goes to the backbone (the package's way: the pretrainer itself stays
    float32); the global keras policy is not touched. `recipe`: "sigmoid" or "full"
    (sigmoid + LocCa + SILC + TIPS, the teacher stage on)."""
    import keras

    build = require("keras_siglip2.models.factory", "build_backbone")
    pretrainer_cls = require("keras_siglip2.training.pretrainer", "SigLIP2Pretrainer")
    full = recipe == "full"
    models = {}
    for policy in POLICIES:
        keras.utils.set_random_seed(seed)
        backbone = build(vision, text, dtype=policy)
        models[policy] = pretrainer_cls(
            backbone, decoder="locca" if full else None, self_distillation=full,
            masked_prediction=full, seed=seed,
            local_image_size=recipe_local_size(vision) if full else None)
        if full:
            models[policy].start_teacher_stage()
    models["mixed_bfloat16"].set_weights(models["float32"].get_weights())
    return models


def recipe_local_size(vision):
    """SILC's local crops at 3/7 of the image side (96 px at 224 px), whole patches."""
    patch = vision["patch_size"]
    return max(patch, round(vision["image_size"] * 3 / 7 / patch) * patch)


def synthetic_batches(vision, text, vocabulary, batch, examples, recipe, seed=0):
    """A fixed stream: `examples` random image-text pairs (learnable: the towers can
    memorize which caption goes with which image) cut into batches of `batch`, with
    every field the recipe reads, including the step's random choices ("tips_mask",
    "locca_parallel"), so that both precisions see exactly the same inputs."""
    rng = np.random.RandomState(seed)
    size, patch = vision["image_size"], vision["patch_size"]
    length = text["max_sequence_length"]
    out = []
    for _ in range(max(1, examples // batch)):
        b = {"images": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
             "token_ids": rng.randint(0, text["vocabulary_size"], (batch, length)).astype(
                 np.int32)}
        if recipe == "full":
            local = recipe_local_size(vision)
            grid = (size // patch) ** 2
            mask = np.zeros((batch, grid), np.int32)
            for i in range(batch):
                mask[i, rng.permutation(grid)[: grid // 2]] = 1
            b.update(
                decoder_token_ids=rng.randint(0, vocabulary, (batch, 3, length)).astype(
                    np.int32),
                decoder_targets=rng.randint(0, vocabulary, (batch, 3, length)).astype(
                    np.int32),
                decoder_weights=np.ones((batch, 3, length), np.float32),
                teacher_images=np.flip(b["images"], axis=2).copy(),
                local_images=rng.uniform(-1, 1, (batch, 2, local, local, 3)).astype(
                    np.float32),
                tips_mask=mask, locca_parallel=(np.arange(batch) % 2).astype(np.int32))
        out.append(b)
    return out


def _loss_curves(spec):
    """{policy: [loss per step]} over spec["steps"] optimizer steps."""
    models = _pretrainers(spec["vision"], spec["text"], spec["recipe"])
    vocabulary = getattr(models["float32"].decoder, "vocabulary_size", 1)
    batches = synthetic_batches(spec["vision"], spec["text"], vocabulary, spec["batch"],
                                spec["examples"], spec["recipe"])
    curves = {}
    for policy, model in models.items():
        progress(f"precision: {spec['steps']} steps under {policy}")
        model.compile(learning_rate=spec["learning_rate"], total_steps=spec["steps"],
                      warmup_steps=0)
        curves[policy] = [
            float(model.train_on_batch(batches[i % len(batches)], return_dict=True)["loss"])
            for i in range(spec["steps"])]
    return curves


def _step_timing(cfg, spec):
    models = _pretrainers(spec["vision"], spec["text"], "sigmoid")
    x = synthetic_batches(spec["vision"], spec["text"], 1, spec["batch"], spec["batch"],
                          "sigmoid")[0]
    for model in models.values():
        model.compile(total_steps=10_000)
    progress(f"precision: timing the step under {POLICIES} x {spec['repeats']} rounds")
    return alternate({p: (lambda m=m: m.train_on_batch(x)) for p, m in models.items()},
                     spec["repeats"], cfg["min_seconds"])


@row("precision", "bf16 (mixed_bfloat16) vs float32: train-step time, loss over 50 steps")
def row_precision(cfg, ctx):
    spec = cfg["precision"]
    step, run = spec["step"], spec["loss_run"]
    timing = _step_timing(cfg, step)
    m = timing["median_s"]
    batch = step["batch"]
    entries = [entry(f"train step under {p}", batch / m[p], "examples/s",
                     note=f"batch {batch}; {m[p]:.3f} s per step; first call "
                          f"{timing['first_s'][p]:.1f} s") for p in POLICIES]
    entries.append(entry(
        "mixed_bfloat16 / float32 train-step speed", batch / m["mixed_bfloat16"],
        "examples/s", ratio=paired_ratio(timing, "mixed_bfloat16", "float32"),
        vs="float32 step", note="> 1: bf16 faster. On CPU XLA has no native bfloat16 "
                                "GEMMs (it converts), so < 1 is expected there"))
    del timing
    free_memory()
    curves = _loss_curves(run)
    steps = run["steps"]
    worst, relative = loss_agreement(curves["float32"], curves["mixed_bfloat16"])
    entries += [
        entry(f"{steps} steps: max |loss bf16 - loss f32| over the steps", worst, "loss",
              note=f"float32 loss range {min(curves['float32']):.4f}.."
                   f"{max(curves['float32']):.4f}"),
        entry(f"{steps} steps: |loss bf16 - loss f32| / loss f32 at step {steps}", relative,
              "relative"),
    ]
    for policy in POLICIES:
        first, last = curves[policy][0], curves[policy][-1]
        entries.append(entry(
            f"{steps} steps under {policy}: final loss", last, "loss", ratio=last / first,
            vs="its first-step loss", target=("<=", 1.0),
            note=f"first {first:.4f}, last {last:.4f}: "
                 + ("fell" if last < first else "did NOT fall")))
    ctx["notes"].setdefault("precision", []).append(
        f"Step time: sigmoid-only SigLIP2Pretrainer, {step['arch']}, batch {batch}, the "
        "same weights under both policies (the dtype policy is the backbone's `dtype`; "
        "the pretrainer's losses and heads stay float32), timed in alternation "
        f"({step['repeats']} rounds). Loss: {run['arch']}, "
        + ("the full recipe (sigmoid + LocCa with its three tasks + SILC with 2 local "
           "crops + TIPS, teacher stage on from step 0)" if run["recipe"] == "full"
           else "sigmoid only")
        + f", {steps} AdamW steps (lr {run['learning_rate']:g}, cosine, no "
        f"warmup) over {run['examples']} fixed random image-text pairs in batches of "
        f"{run['batch']}, same seed, same starting weights, same TIPS masks and LocCa "
        "choices (given in the batch). The logged loss of a step is computed before its "
        "update. On this CPU, bfloat16 runs without native bfloat16 matmuls: the time "
        "ratio says nothing about TPU / GPU.")
    return entries
