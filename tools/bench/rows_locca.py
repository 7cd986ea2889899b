"""Row: the layout of LocCa's three task sequences in one decoder pass (issue 17 item 1,
paper sec. 2.2): stacked on the batch axis, (3B, L) with a causal mask (what
`SigLIP2Pretrainer` does), against concatenated, (B, 3L) with a block-diagonal causal
mask. Both give the same tokens to the MLP, the cross-attention and the vocabulary
projection; they differ in the self-attention, timed here forward and backward."""

import numpy as np

from tools.bench.common import alternate, entry, max_abs_diff, paired_ratio, progress, row

STACKED = "stacked (3B, L), causal"
CONCATENATED = "concatenated (B, 3L), block-diagonal causal mask"


def block_causal_mask(length, blocks):
    """(blocks * length)^2 bool: causal within each block of `length`, nothing across."""
    causal = np.tril(np.ones((length, length), bool))
    mask = np.zeros((blocks * length, blocks * length), bool)
    for t in range(blocks):
        mask[t * length:(t + 1) * length, t * length:(t + 1) * length] = causal
    return mask


def layout_contenders(batch, length, heads, head_dim, seed=0):
    """{name: jitted gradient of the summed self-attention output w.r.t. its (3B, L,
    H, D) input} for both layouts, and that input."""
    import jax
    import jax.numpy as jnp
    from keras import ops

    x = jnp.asarray(np.random.RandomState(seed).randn(3 * batch, length, heads, head_dim)
                    .astype("float32"))
    mask = jnp.asarray(block_causal_mask(length, 3))[None, None]

    def stacked(q):
        return ops.sum(ops.dot_product_attention(q, q, q, is_causal=True))

    def concatenated(q):
        q = ops.reshape(ops.transpose(ops.reshape(q, (3, batch, length, heads, head_dim)),
                                      (1, 0, 2, 3, 4)), (batch, 3 * length, heads, head_dim))
        return ops.sum(ops.dot_product_attention(q, q, q, mask=mask))

    return {STACKED: jax.jit(jax.grad(stacked)),
            CONCATENATED: jax.jit(jax.grad(concatenated))}, x


@row("locca_layout", "LocCa's three tasks in one decoder pass: stacked vs block-mask concat")
def locca_layout_row(cfg, ctx):
    text = cfg["training"]["text"]
    heads = text["num_heads"]
    head_dim, length = text["hidden_dim"] // heads, text["max_sequence_length"]
    batches = [cfg["training"]["batch"], 256 if cfg["name"] == "full" else 16]
    entries = []
    for batch in batches:
        progress(f"locca_layout: batch {batch}")
        contenders, x = layout_contenders(batch, length, heads, head_dim)
        timing = alternate({n: (lambda f=f: f(x).block_until_ready())
                            for n, f in contenders.items()},
                           cfg["repeats"], cfg["min_seconds"])
        diff = max_abs_diff(timing["outputs"][STACKED], timing["outputs"][CONCATENATED])
        for name in contenders:
            entries.append(entry(f"B = {batch}: self-attention fwd + bwd, {name}",
                                 timing["median_s"][name] * 1e3, "ms",
                                 note=f"L = {length} per task, {heads} heads of {head_dim}"))
        entries.append(entry(
            f"B = {batch}: concatenated / stacked time", None, "",
            ratio=paired_ratio(timing, STACKED, CONCATENATED), vs=STACKED,
            note=f"same gradients (max |diff| {diff:.1e}); > 1 = stacking is faster: "
                 "the block mask computes all (3L)^2 scores, stacking 3 L^2"))
    return entries
