"""Row "scaling_loss_memory" (issue 19 item 4, the memory part): how the compiled memory
of the sigmoid loss + gradients (paper sec. 2.1, SigLIP's pairwise sigmoid loss) grows with
the global batch B, for the plain (B x B logits), chunked (B x chunk blocks) and ring
(8 simulated devices, (B/8) x (B/8) blocks per device) forms; fitted exponents (the
slope of log memory vs log B) and a log-log PNG plot. Compiled, never run, so B up to
65,536 costs seconds (XLA's memory analysis, as the "loss_memory" row).

Row "scaling_compute" (the time part): executed step / forward times with their fitted
exponents vs the global batch (the loss + gradients: plain, chunked, and the ring form
on simulated devices), vs the NaFlex sequence length, and vs the tower size (Ti, S, B
at reduced depth: the image forward and a sigmoid-only SigLIP2Pretrainer train step),
plotted in scaling_compute.png."""

import math

import numpy as np

from tools.bench.common import entry, progress, require, row, unavailable
from tools.bench.rows_memory import (
    DISTRIBUTED_DEVICES, _distributed_loss_memory, compiled_memory, run_simulated_devices_child,
)

# The figures issue 19 quotes for the loss at B = 65,536 on an H100 (not re-measured here).
PEERS_AT_65536 = {"open_clip SigLipLoss": 33e9, "Triton siglip kernel": 736e6}


def fitted_exponent(batches, sizes):
    """Least-squares slope of log(size) against log(batch): 2 for B^2 memory, 1 for B."""
    return float(np.polyfit(np.log(batches), np.log(sizes), 1)[0])


def _single_device_forms(chunk):
    sigmoid = require("keras_siglip2.training.losses.sigmoid")
    return {
        "plain": sigmoid.sigmoid_loss,
        f"chunked (chunk {chunk})": lambda i, t, s, b: sigmoid.chunked_sigmoid_loss(
            i, t, s, b, chunk_size=chunk),
    }


def loss_memory_curves(batches, dim, chunk):
    """{form: [temporary bytes per batch]} (the ring form per device), compiled only."""
    import jax

    curves = {}
    scalar = jax.ShapeDtypeStruct((), np.float32)
    for name, fn in _single_device_forms(chunk).items():
        grad = jax.value_and_grad(fn, argnums=(0, 1, 2, 3))
        curves[name] = []
        for batch in batches:
            progress(f"scaling: compiling {name} at batch {batch}")
            emb = jax.ShapeDtypeStruct((batch, dim), np.float32)
            curves[name].append(compiled_memory(grad, emb, emb, scalar, scalar)[0])
    ring = _distributed_loss_memory({"batches": batches, "dim": dim})
    if isinstance(ring, dict):
        name = f"ring ({ring['devices']} devices, per device)"
        curves[name] = [ring["batches"][str(b)][0] for b in batches]
    return curves, (None if isinstance(ring, dict) else ring)


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None without matplotlib."""
    try:
        import matplotlib  # lazy: optional, only for the plots

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # lazy: optional, only for the plots
    except ImportError:
        return None
    return plt


def _save_figure(plt, fig, path):
    """Writes a plot as PNG (100 dpi), closes it and returns its path."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(path, batches, curves, title, ylabel):
    """A log-log PNG of the curves; returns the path, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sizes in curves.items():
        ax.loglog(batches, np.asarray(sizes) / 2 ** 20, "o-",
                  label=f"{name} (exponent {fitted_exponent(batches, sizes):.2f})")
    ax.set_xlabel("global batch B (legend: exponent fitted over all B)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(plt, fig, path)


@row("scaling_loss_memory", "Scaling: sigmoid loss memory vs global batch (compiled)")
def row_scaling_loss_memory(cfg, ctx):
    spec = cfg["scaling"]
    batches, dim, chunk = spec["batches"], spec["dim"], spec["chunk_size"]
    curves, ring_missing = loss_memory_curves(batches, dim, chunk)
    entries = []
    tail = max(2, len(batches) // 2)  # the large-B regime, where the leading term shows
    for name, sizes in curves.items():
        entries.append(entry(
            f"{name}: memory exponent over B = {batches[0]:,}..{batches[-1]:,}",
            fitted_exponent(batches, sizes), "d log(temporaries) / d log(B)",
            note=f"over the largest {tail} batches "
                 f"{fitted_exponent(batches[-tail:], sizes[-tail:]):.2f}; temporaries "
                 f"{sizes[0] / 2 ** 20:,.1f} MiB at B = {batches[0]:,}, "
                 f"{sizes[-1] / 2 ** 20:,.0f} MiB at B = {batches[-1]:,}"))
    if ring_missing:
        entries.append(unavailable("ring form", ring_missing))
    if 65536 in batches:
        i = batches.index(65536)
        for name, sizes in curves.items():
            for peer, peer_bytes in PEERS_AT_65536.items():
                entries.append(entry(
                    f"B = 65,536: {name} vs {peer}", sizes[i] / 2 ** 20, "MiB temporaries",
                    ratio=peer_bytes / sizes[i], vs=f"{peer} ({peer_bytes / 1e9:g} GB)"))
    out = ctx.get("out")
    if out is not None:
        path = plot_curves(out / "scaling_loss_memory.png", batches, curves,
                           f"Sigmoid loss + gradients, width {dim}: compiled temporaries",
                           "MiB (per device for the ring)")
        if path is not None:
            ctx.setdefault("plots", []).append(path.name)
    ctx["notes"].setdefault("scaling_loss_memory", []).append(
        f"Embedding width {dim}, float32, jax.value_and_grad of the loss w.r.t. both "
        "embeddings, the temperature and the bias; XLA's compiled memory analysis "
        "(temporary buffers), never executed. The ring form runs on "
        f"{DISTRIBUTED_DEVICES} simulated CPU devices; its figure is per device. Peers' "
        "figures at B = 65,536 are the ones issue 19 quotes for an H100 (open_clip's "
        "SigLipLoss materializes the B x B logits; the Triton kernel streams them); their "
        "embedding width and dtype are not stated there, so the ratio is indicative. "
        f"Plot: scaling_loss_memory.png (exponents in the legend; {math.log2(batches[-1] / batches[0]):.0f} doublings of B).")
    return entries


# ------------------------------------------------------------- compute scaling curves


def _loss_step_contenders(batches, dim, chunk):
    """{(form, B): run()} for loss + gradients of the single-device forms (executed)."""
    import jax

    rng = np.random.RandomState(0)
    runs = {}
    for name, fn in _single_device_forms(chunk).items():
        grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
        for batch in batches:
            args = (jax.numpy.asarray(rng.normal(size=(batch, dim)), "float32"),
                    jax.numpy.asarray(rng.normal(size=(batch, dim)), "float32"),
                    jax.numpy.float32(2.3), jax.numpy.float32(-10.0))
            compiled = grad.lower(*args).compile()
            runs[(name, batch)] = (lambda c=compiled, a=args: jax.block_until_ready(c(*a)))
    return runs


def _naflex_contenders(spec):
    """{("NaFlex forward", N): run()} of a reduced-depth NaFlex tower per length N."""
    import keras

    from keras_siglip2.models import SigLIP2NaFlexVisionEncoder
    from tools.bench.common import jax_compiled_forward
    from tools.bench.rows_naflex import naflex_layout

    v = spec["naflex_vision"]
    keras.utils.set_random_seed(0)
    encoder = SigLIP2NaFlexVisionEncoder(**v, max_num_patches=max(spec["lengths"]))
    rng = np.random.RandomState(0)
    runs = {}
    for length in spec["lengths"]:
        _, positions, mask = naflex_layout(1, length, v["patch_size"], rng)
        patches = rng.uniform(-1, 1, (1, length, v["patch_size"] ** 2 * 3)).astype("float32")
        runs[("NaFlex forward", length)] = jax_compiled_forward(
            encoder, {"pixel_patches": patches, "patch_positions": positions,
                      "patch_mask": mask})[0]
    return runs


def _tower_contenders(spec):
    """{("image forward", width): run()} of reduced-depth towers of each size."""
    import keras

    from keras_siglip2.models import SigLIP2VisionEncoder
    from tools.bench.common import jax_compiled_forward

    images = np.random.RandomState(0).uniform(
        -1, 1, (1, spec["image_size"], spec["image_size"], 3)).astype("float32")
    runs = {}
    for arch, size in spec["towers"].items():
        keras.utils.set_random_seed(0)
        tower = SigLIP2VisionEncoder(image_size=spec["image_size"], **size)
        runs[("image forward", size["hidden_dim"])] = jax_compiled_forward(
            tower, {"images": images})[0]
    return runs


def _tower_train_contenders(spec):
    """{(train step name, width): run()}: one sigmoid-only SigLIP2Pretrainer train step
    (forward + backward + AdamW update) per tower size, both towers of that size at the
    same reduced depth (the text tower short, with a small vocabulary: the image tower
    dominates)."""
    batch, length, vocab = (spec["train_batch"], spec["train_text_length"],
                            spec["train_vocabulary"])
    rng = np.random.RandomState(0)
    size = spec["image_size"]
    x = {"images": rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32"),
         "token_ids": rng.randint(0, vocab, (batch, length)).astype("int32")}
    runs = {}
    for arch, tower in spec["towers"].items():
        model = _sigmoid_pretrainer(dict(tower, image_size=size), spec)
        runs[(TRAIN_STEP.format(batch=batch), tower["hidden_dim"])] = (
            lambda m=model: m.train_on_batch(x))
    return runs


def _sigmoid_pretrainer(vision, spec):
    """A compiled sigmoid-only SigLIP2Pretrainer of image tower `vision` (a
    build_backbone config) and a text tower of its width and depth, with the spec's
    short text (`train_text_length`, `train_vocabulary`); seeded 0."""
    import keras

    build = require("keras_siglip2.models.factory", "build_backbone")
    pretrainer_cls = require("keras_siglip2.training.pretrainer", "SigLIP2Pretrainer")
    keras.utils.set_random_seed(0)
    text = dict(vocabulary_size=spec["train_vocabulary"],
                max_sequence_length=spec["train_text_length"],
                projection_dim=vision["hidden_dim"],
                **{k: vision[k] for k in ("hidden_dim", "num_layers", "num_heads",
                                          "intermediate_dim")})
    model = pretrainer_cls(build(vision, text), decoder=None, self_distillation=False,
                           masked_prediction=False, seed=0)
    model.compile(total_steps=10_000)
    return model


def _naflex_train_contenders(spec):
    """{(NaFlex train step name, N): run()}: one sigmoid-only SigLIP2Pretrainer train
    step of the reduced-depth NaFlex tower (and a text tower of its width and depth)
    per sequence length N, batch `train_batch`, random aspect ratios (one compiled step
    per length, as a NaFlex run compiles one per drawn length)."""
    from tools.bench.rows_naflex import naflex_layout

    v, batch = spec["naflex_vision"], spec["train_batch"]
    length, vocab = spec["train_text_length"], spec["train_vocabulary"]
    model = _sigmoid_pretrainer(
        dict(v, type="naflex", max_num_patches=max(spec["lengths"])), spec)
    rng = np.random.RandomState(0)
    runs = {}
    for n in spec["lengths"]:
        _, positions, mask = naflex_layout(batch, n, v["patch_size"], rng)
        x = {"pixel_patches": rng.uniform(-1, 1, (batch, n, v["patch_size"] ** 2 * 3))
             .astype("float32"), "patch_positions": positions, "patch_mask": mask,
             "token_ids": rng.randint(0, vocab, (batch, length)).astype("int32")}
        runs[(NAFLEX_TRAIN_STEP.format(batch=batch), n)] = (
            lambda m=model, x=x: m.train_on_batch(x))
    return runs


TRAIN_STEP = "sigmoid-only train step (batch {batch})"
NAFLEX_TRAIN_STEP = "NaFlex sigmoid-only train step (batch {batch})"
RING_TIME = "ring ({devices} simulated devices, shared cores)"


def _ring_time_curve(cfg, batches, repeats, dim, settle=True):
    """{ring name: [(B, s)]} of the ring loss + gradients, timed in a subprocess with
    simulated devices, or the reason (str) it is not available."""
    out = run_simulated_devices_child("distributed_loss_time", {
        "batches": batches, "dim": dim, "repeats": repeats,
        "min_seconds": cfg["min_seconds"], "settle": settle})
    if not isinstance(out, dict):
        return out
    return {RING_TIME.format(devices=out["devices"]): [
        (b, out["median_s"][str(b)]) for b in batches]}


def _loss_step_curves(cfg, spec, entries):
    """{form: [(B, s)]} of the loss + gradients, plain / chunked on one device and the
    ring on simulated devices: the batches of `step_batches` timed in one alternation
    (`repeats` rounds), those of `large_step_batches` in another (`large_repeats`)."""
    curves = {}
    # The large batches' steps take seconds each (27-35 s at 32k): no settling call there.
    for batches, repeats, settle in (
            (spec["step_batches"], spec["repeats"], True),
            (spec["large_step_batches"], spec["large_repeats"], False)):
        progress(f"scaling: timing the loss steps at B = {batches[0]:,}..{batches[-1]:,}")
        group = _timed_curves(_loss_step_contenders(batches, spec["dim"], spec["chunk_size"]),
                              repeats, cfg["min_seconds"], settle=settle)
        progress("scaling: the ring loss on simulated devices at the same batches")
        ring = _ring_time_curve(cfg, batches, repeats, spec["dim"], settle)
        if isinstance(ring, dict):
            group.update(ring)
        else:
            entries.append(unavailable(f"ring form step time at B = {batches}", ring))
        for name, points in group.items():
            curves.setdefault(name, []).extend(points)
    return curves


def _timed_curves(runs, repeats, min_seconds, settle=True):
    """Times {(curve, x): run()} in alternation; {curve: [(x, median s)]}."""
    from tools.bench.common import alternate

    timing = alternate({f"{k[0]} @ {k[1]}": fn for k, fn in runs.items()}, repeats,
                       min_seconds, settle=settle)
    curves = {}
    for name, x in runs:
        curves.setdefault(name, []).append((x, timing["median_s"][f"{name} @ {x}"]))
    return curves


def _curve_entries(curves, what, unit):
    entries = []
    for name, points in curves.items():
        xs = [x for x, _ in points]
        ts = [t for _, t in points]
        entries.append(entry(
            f"{name}: time exponent over {what} = {xs[0]:,}..{xs[-1]:,}",
            fitted_exponent(xs, ts), f"d log(time) / d log({unit})",
            note=", ".join(f"{x:,}: {t * 1e3:.3g} ms" for x, t in points)))
    return entries


@row("scaling_compute", "Scaling: step / forward time vs batch, NaFlex length, tower size")
def row_scaling_compute(cfg, ctx):
    spec = cfg["scaling"]
    repeats, min_seconds = spec["repeats"], cfg["min_seconds"]
    plots, entries = {}, []
    plots["B"] = _loss_step_curves(cfg, spec, entries)
    progress("scaling: timing the NaFlex forwards (vs N)")
    plots["N"] = _timed_curves({**_naflex_contenders(spec),
                                **_naflex_train_contenders(spec)}, repeats, min_seconds)
    progress("scaling: timing the tower forwards and train steps (vs width)")
    plots["width"] = _timed_curves({**_tower_contenders(spec), **_tower_train_contenders(spec)},
                                   repeats, min_seconds)
    for what, curves in plots.items():
        entries += _curve_entries(curves, what, what)
    out = ctx.get("out")
    if out is not None and _plot_compute(out / "scaling_compute.png", plots) is not None:
        ctx.setdefault("plots", []).append("scaling_compute.png")
    depth = next(iter(spec["towers"].values()))["num_layers"]
    ctx["notes"].setdefault("scaling_compute", []).append(
        f"Executed, timed in alternation ({repeats} rounds, medians; the loss step at "
        f"B >= {spec['large_step_batches'][0]:,} in a second alternation of "
        f"{spec['large_repeats']} rounds). Loss step: "
        f"jax.value_and_grad of the sigmoid loss, width {spec['dim']}, one device; the "
        f"ring form on {DISTRIBUTED_DEVICES} simulated CPU devices in a subprocess "
        "(timed in alternation across B there, not with the one-device forms; the "
        "devices share the host's cores, so its time is the whole ring's work plus the "
        "simulated transfers, not one device's). "
        f"NaFlex: {spec['naflex_vision']}, random aspect ratios: the forward at batch 1 "
        f"and a sigmoid-only SigLIP2Pretrainer train step at batch {spec['train_batch']} "
        "(a text tower of the same width and depth). Towers: "
        + ", ".join(f"{a} width {s['hidden_dim']}" for a, s in spec["towers"].items())
        + f" at depth {depth}, {spec['image_size']} px: the image forward at batch 1, and "
        "a sigmoid-only SigLIP2Pretrainer train step (forward + backward + AdamW, "
        "siglip2_optimizer) with both towers of that width and depth, batch "
        f"{spec['train_batch']}, text length {spec['train_text_length']}, vocabulary "
        f"{spec['train_vocabulary']:,}. Exponents: least-squares slope in log-log.")
    return entries


def _plot_compute(path, plots):
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(plots), figsize=(5 * len(plots), 4))
    for ax, (what, curves) in zip(np.atleast_1d(axes), plots.items()):
        for name, points in curves.items():
            xs, ts = zip(*points)
            ax.loglog(xs, np.asarray(ts) * 1e3, "o-",
                      label=f"{name} (exponent {fitted_exponent(xs, ts):.2f})")
        xs = sorted({x for points in curves.values() for x, _ in points})
        ax.set_xticks(xs, [f"{x:,}" for x in xs])  # the measured points, no minor labels
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel(what)
        ax.set_ylabel("ms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save_figure(plt, fig, path)
