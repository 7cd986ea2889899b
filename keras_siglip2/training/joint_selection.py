"""Joint example selection (JEST, Evans et al. 2024, "Data curation via joint example
selection further accelerates multimodal learning"), the selection rule ACID uses
(paper sec. 2.5; Udandarao et al. 2024).

A contrastive loss couples the examples of a batch, so the learnability of a sub-batch
S is not a sum of per-example scores: with the sigmoid loss it is the sum of a pairwise
matrix A over S x S, A_ij = learner_loss(i, j) - reference_loss(i, j). Picking the best
S exactly is combinatorial; JEST samples it in `num_chunks` blocks. Each block is drawn
without replacement from the examples not yet chosen, with probabilities proportional
to exp(conditional learnability), where the conditional learnability of candidate i
given the chosen set C is what adding i adds to the sub-batch score:

    A_ii + sum_{j in C} (A_ij + A_ji).

The first block (C empty) is thus drawn by the examples' own pair scores; later blocks
prefer examples that are hard negatives for (or have hard negatives among) what is
already chosen. Sampling uses the Gumbel-top-k trick: adding independent Gumbel noise
to the log-probabilities and taking the top k draws k items without replacement with
exactly those probabilities. Everything has static shapes (`keras.ops.top_k` of fixed
sizes, a Python loop over the blocks), so it runs inside a jitted train step.
"""

from keras import ops, random

from keras_siglip2.checks import check_positive_int

DEFAULT_NUM_CHUNKS = 16


def chunk_sizes(total, num_chunks):
    """`total` split into min(num_chunks, total) block sizes differing by at most one,
    larger blocks first."""
    check_positive_int("total", total)
    count = min(check_positive_int("num_chunks", num_chunks), total)
    base, extra = divmod(total, count)
    return [base + 1] * extra + [base] * (count - extra)


def conditional_learnability(scores, chosen):
    """(B,) A_ii + sum_j chosen_j (A_ij + A_ji) for a (B, B) score matrix A and a (B,)
    0/1 float mask of the chosen examples."""
    diagonal = ops.diagonal(scores)
    return diagonal + ops.matmul(scores + ops.transpose(scores), chosen)


def gumbel_noise(shape, seed):
    """Independent standard Gumbel draws, -log(-log(U)) with U in (0, 1)."""
    uniform = random.uniform(shape, minval=1e-12, maxval=1.0, seed=seed)
    return -ops.log(-ops.log(uniform))


def joint_selection(scores, num_selected, num_chunks=DEFAULT_NUM_CHUNKS, seed=None):
    """Indices (num_selected,) int32 of a sub-batch sampled blockwise by joint
    learnability (see the module docstring), in the order they were drawn.

    Args:
        scores: (B, B) float learnability matrix (no gradient is taken through it).
        num_selected: int, 1 <= num_selected <= B.
        num_chunks: blocks to draw the sub-batch in (16 in JEST).
        seed: int, `keras.random.SeedGenerator` or None, for the Gumbel noise.
    """
    scores = ops.stop_gradient(ops.cast(scores, "float32"))
    size = scores.shape[0]
    if len(scores.shape) != 2 or size is None or scores.shape[1] != size:
        raise ValueError(f"`scores` must be a static square (B, B) matrix; got shape "
                         f"{tuple(scores.shape)}.")
    if check_positive_int("num_selected", num_selected) > size:
        raise ValueError(f"`num_selected` = {num_selected} exceeds the {size} candidates.")
    blocks = chunk_sizes(num_selected, num_chunks)
    noise = gumbel_noise((len(blocks), size), seed)  # one draw: independent rows
    chosen = ops.zeros((size,), "float32")
    picked = []
    for b, block in enumerate(blocks):
        logits = conditional_learnability(scores, chosen)
        logits = ops.where(chosen > 0, -1e30, logits + noise[b])
        _, indices = ops.top_k(logits, block, sorted=True)
        indices = ops.cast(indices, "int32")
        chosen = chosen + ops.sum(ops.one_hot(indices, size, dtype="float32"), axis=0)
        picked.append(indices)
    return ops.concatenate(picked, axis=0)
