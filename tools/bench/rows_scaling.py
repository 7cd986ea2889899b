"""Row "scaling_loss_memory" (issue 19 item 4, the memory part): how the compiled memory
of the sigmoid loss + gradients (paper sec. 2.1, SigLIP's pairwise sigmoid loss) grows with
the global batch B, for the plain (B x B logits), chunked (B x chunk blocks) and ring
(8 simulated devices, (B/8) x (B/8) blocks per device) forms; fitted exponents (the
slope of log memory vs log B) and a log-log PNG plot. Compiled, never run, so B up to
65,536 costs seconds (XLA's memory analysis, as the "loss_memory" row)."""

import math

import numpy as np

from tools.bench.common import entry, progress, require, row, unavailable
from tools.bench.rows_memory import DISTRIBUTED_DEVICES, _distributed_loss_memory, compiled_memory

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


def plot_curves(path, batches, curves, title, ylabel):
    """A log-log PNG of the curves; returns the path, or None without matplotlib."""
    try:
        import matplotlib  # lazy: optional, only for the plots

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # lazy: optional, only for the plots
    except ImportError:
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
