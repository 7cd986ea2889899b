"""Row 3: NaFlex, the batched position-grid resize against a per-image loop, and the forward pass per sequence length."""

import importlib
import importlib.metadata
import math
import statistics

import numpy as np

from tools.bench.common import alternate, backend_device, compute_dtype, entry, jax_compiled_forward, matmul_contender, max_abs_diff, paired_ratio, progress, require, row, vision_flops




def naflex_layout(batch, length, patch_size, rng, scale_grid=True):
    """Random aspect ratios -> per-image (h, w) patch grids with h * w <= length (the
    NaFlex converter's rule), row-major positions and the padding mask."""
    shapes = []
    for _ in range(batch):
        aspect = math.exp(rng.uniform(math.log(0.25), math.log(4.0)))
        h = max(1, min(length, int(math.sqrt(length * aspect))))
        w = max(1, min(length // h, int(round(h / aspect)) or 1))
        if scale_grid:  # grow the smaller side while it fits, as the converter would
            while (h + 1) * w <= length and h < w * aspect:
                h += 1
            while h * (w + 1) <= length and w < h / aspect:
                w += 1
        shapes.append((h, w))
    positions = np.zeros((batch, length, 2), np.int32)
    mask = np.zeros((batch, length), np.int32)
    for b, (h, w) in enumerate(shapes):
        rows, cols = np.divmod(np.arange(h * w), w)
        positions[b, : h * w, 0], positions[b, : h * w, 1] = rows, cols
        mask[b, : h * w] = 1
    return shapes, positions, mask


def position_grid_functions(layer, shapes, length):
    """(batched(positions, mask), loop(positions, mask), source) for the grid of `layer`:
    the package's `position_embeddings` / `position_embeddings_per_image_loop` when it
    has them, else the layer's batched method and a loop over the public per-image
    `SigLIP2PositionGrid.resized(h, w)` (row-major patches, padded to `length`)."""
    from keras import ops

    pg = importlib.import_module("keras_siglip2.layers.position_grid")
    if hasattr(pg, "position_embeddings") and hasattr(pg, "position_embeddings_per_image_loop"):
        grid = layer.grid.value
        # The batched contender is the inference path (`gather=True`: the 4 x 4 taps
        # where every side is >= G / 2, else the matmul), what the model runs there.
        return (lambda p, m: pg.position_embeddings(grid, p, m, gather=True),
                lambda p, m: pg.position_embeddings_per_image_loop(grid, p, m),
                "keras_siglip2.layers.position_grid.position_embeddings_per_image_loop")

    def loop(positions, mask):
        out = []
        for h, w in shapes:
            resized = ops.reshape(layer.resized(h, w), (h * w, layer.hidden_dim))
            out.append(ops.pad(resized, ((0, length - h * w), (0, 0))))
        return ops.stack(out)

    return layer.position_embeddings, loop, "SigLIP2PositionGrid.resized(h, w) per image"


@row("naflex", "NaFlex: batched position-grid resize vs per-image loop; forward per length")
def row_naflex(cfg, ctx):
    import jax
    import keras

    require("keras_siglip2.layers.position_grid", "SigLIP2PositionGrid")
    encoder_cls = require("keras_siglip2.models.naflex_vision_encoder",
                          "SigLIP2NaFlexVisionEncoder")
    from keras_siglip2.layers.position_grid import SigLIP2PositionGrid

    spec = cfg["naflex"]
    v = spec["vision"]
    rng = np.random.RandomState(0)
    keras.utils.set_random_seed(0)
    entries = []

    # (a) the position-grid resize at batch B
    batch, length = spec["resize_batch"], spec["resize_length"]
    layer = SigLIP2PositionGrid(v["position_grid_size"], v["hidden_dim"])
    layer.build(None)
    shapes, positions, mask = naflex_layout(batch, length, v["patch_size"], rng)
    batched_fn, loop_fn, loop_source = position_grid_functions(layer, shapes, length)
    compiled = jax.jit(batched_fn).lower(positions, mask).compile()
    batched = lambda: jax.block_until_ready(compiled(positions, mask))  # noqa: E731
    loop = lambda: jax.block_until_ready(loop_fn(positions, mask))  # noqa: E731
    # The floor: a matmul writing the same float32 (B, N, d) output with 1/G of the
    # multiply-adds (K = G instead of G^2).
    g = v["position_grid_size"]
    floor_w = rng.uniform(0, 1, (batch, length, g)).astype(np.float32)
    floor_fn = jax.jit(lambda w: w @ layer.grid.value[0]).lower(floor_w).compile()
    floor = lambda: jax.block_until_ready(floor_fn(floor_w))  # noqa: E731
    progress(f"naflex: resize at batch {batch}, length {length}")
    timing = alternate({"batched (jit)": batched, "per-image loop": loop,
                        "output-size floor": floor},
                       cfg["repeats"], cfg["min_seconds"])
    got = np.asarray(timing["outputs"]["batched (jit)"]) * mask[..., None]
    want = np.asarray(timing["outputs"]["per-image loop"]) * mask[..., None]
    m = timing["median_s"]
    entries.append(entry(f"resize: batched (jit), batch {batch}", batch / m["batched (jit)"],
                         "images/s"))
    entries.append(entry(f"resize: per-image loop, batch {batch}",
                         batch / m["per-image loop"], "images/s",
                         note=f"eager, {loop_source}"))
    entries.append(entry("resize: batched / per-image loop", batch / m["batched (jit)"],
                         "images/s", ratio=paired_ratio(timing, "batched (jit)",
                                                        "per-image loop"),
                         vs="per-image loop", target=(">=", 20)))
    entries.append(entry("resize: same embeddings, batched vs loop", max_abs_diff(got, want),
                         "max |diff|"))
    entries.append(entry(
        "resize: batched time / output-size floor time", m["batched (jit)"] * 1e3, "ms",
        ratio=1.0 / paired_ratio(timing, "batched (jit)", "output-size floor"),
        vs="output-size floor",
        note=f"floor = a ({batch}, {length}, {g}) @ ({g}, {v['hidden_dim']}) matmul: the "
             f"same float32 output, 1/{g} of the multiply-adds; ~1 means the resize costs "
             "what writing its output costs"))
    hw = np.array(shapes)
    ctx["notes"].setdefault("naflex", []).append(
        f"Resize batch: {batch} images, length {length}, grid sides h in "
        f"[{hw[:, 0].min()}, {hw[:, 0].max()}], w in [{hw[:, 1].min()}, {hw[:, 1].max()}]; "
        f"{spec['arch']} forward: jax.jit of stateless_call, random weights, "
        "random aspect ratios.")

    # (b) the whole forward per sequence length
    encoder = encoder_cls(**v, max_num_patches=max(n for n, _ in spec["forward"]),
                          dtype=compute_dtype())
    contenders, work = {}, {}
    for length, batch in spec["forward"]:
        _, positions, mask = naflex_layout(batch, length, v["patch_size"], rng)
        patches = rng.uniform(-1, 1, (batch, length, v["patch_size"] ** 2 * 3))
        inputs = {"pixel_patches": patches.astype(np.float32), "patch_positions": positions,
                  "patch_mask": mask}
        progress(f"naflex: compiling the forward at length {length}")
        run, _ = jax_compiled_forward(encoder, inputs)
        name = f"forward length {length}"
        contenders[name] = run
        work[name] = (batch, vision_flops(v, tokens=length))
    peak_run = None
    if backend_device() == "cpu":
        peak_run, mm_flops = matmul_contender(cfg["matmul_size"])
        contenders["matmul"] = peak_run
    timing = alternate(contenders, spec["repeats"], cfg["min_seconds"])
    for name, (batch, flops) in work.items():
        fraction = None
        if peak_run is not None:
            fraction = statistics.median(
                (flops * batch / s[name]) / (mm_flops / s["matmul"]) for s in timing["rounds"])
        entries.append(entry(f"{name}, batch {batch}", batch / timing["median_s"][name],
                             "images/s", ratio=fraction,
                             vs="matmul peak (FLOP/s fraction)" if fraction else None,
                             note=f"{flops / 1e9:.1f} GFLOPs per image (padding included)"))
    return entries
