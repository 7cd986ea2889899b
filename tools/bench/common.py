"""What every benchmark row uses: the row registry and table entries, alternating (paired) timing, the FLOP formulas, backend helpers, the peers' models (keras-hub, transformers) built with our weights, and the pure-JAX reference contenders."""

import gc
import importlib
import importlib.metadata
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]



ROWS = {}


class NotAvailable(Exception):
    """The code a row measures is not in the package (yet), or the hardware is absent."""


def row(name, title):
    """Registers `fn(cfg, ctx) -> list of entries` as the row `name`."""

    def register(fn):
        ROWS[name] = (title, fn)
        return fn

    return register


def require(module, attribute=None):
    """Imports `module` (and gets `attribute`); raises NotAvailable when that module or
    attribute does not exist. Errors inside an existing module propagate."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise NotAvailable(f"`{module}` is not in this checkout") from e
        raise
    if attribute is None:
        return mod
    if not hasattr(mod, attribute):
        raise NotAvailable(f"`{module}.{attribute}` is not in this checkout")
    return getattr(mod, attribute)


def entry(label, value, unit, ratio=None, vs=None, target=None, note=None):
    """One line of the table. `target` = (">=" or "<=", number), checked on the ratio
    when there is one, else on the value."""
    met = None
    if target is not None:
        x = ratio if ratio is not None else value
        if x is not None:
            met = bool(x >= target[1]) if target[0] == ">=" else bool(x <= target[1])
    return {
        "label": label,
        "value": None if value is None else float(value),
        "unit": unit,
        "ratio": None if ratio is None else float(ratio),
        "vs": vs,
        "target": None if target is None else f"{target[0]} {target[1]:g}",
        "met": met,
        "note": note,
    }


def unavailable(label, reason):
    return entry(label, None, "", note=f"not available: {reason}")


# --------------------------------------------------------------------------- timing


def _now():
    return time.perf_counter()


def alternate(contenders, repeats, min_seconds, settle=True):
    """Times zero-argument callables in alternation.

    Each callable runs its work to completion (blocking). Two warm-up calls each
    (compilation, then sizing: a sample repeats the call until it lasts `min_seconds`),
    then `repeats` rounds; every round times each contender once, the order rotating.
    With `settle`, each timed sample is preceded by one untimed call of the same
    contender: with the order only rotating, a contender otherwise always follows the
    same one and pays for what that one left (its freed buffers to refault, caches).

    Returns {"first_s": {name: s}, "rounds": [{name: seconds per call}],
    "median_s": {name: s}, "outputs": {name: output of the first call}}.
    """
    names = list(contenders)
    first, outputs, number = {}, {}, {}
    for name in names:
        t0 = _now()
        outputs[name] = contenders[name]()
        first[name] = _now() - t0
    for name in names:
        t0 = _now()
        contenders[name]()
        number[name] = max(1, math.ceil(min_seconds / max(_now() - t0, 1e-6)))
    rounds = []
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        sample = {}
        for name in order:
            fn, n = contenders[name], number[name]
            if settle:
                fn()
            t0 = _now()
            for _ in range(n):
                fn()
            sample[name] = (_now() - t0) / n
        rounds.append(sample)
    median = {n: statistics.median(s[n] for s in rounds) for n in names}
    return {"first_s": first, "rounds": rounds, "median_s": median, "outputs": outputs}


def paired_ratio(timing, faster, slower):
    """Median over rounds of time(slower) / time(faster): > 1 when `faster` is faster."""
    return statistics.median(s[slower] / s[faster] for s in timing["rounds"])


def progress(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- FLOPs


def encoder_flops(tokens, width, depth, mlp):
    """Forward FLOPs (2 per multiply-add) of `depth` pre-LN transformer blocks over
    `tokens` tokens: per block qkv 6Nd^2 + scores 2N^2d + weighted sum 2N^2d + output
    2Nd^2 + MLP 4Ndm = 8Nd^2 + 4N^2d + 4Ndm (norms, GELU, softmax not counted)."""
    n, d, m = tokens, width, mlp
    return depth * (8 * n * d * d + 4 * n * n * d + 4 * n * d * m)


def map_head_flops(tokens, width, mlp):
    """MAP head: probe query 2d^2, key/value 4Nd^2, scores + sum 4Nd, out 2d^2, MLP 4dm."""
    n, d, m = tokens, width, mlp
    return 2 * d * d + 4 * n * d * d + 4 * n * d + 2 * d * d + 4 * d * m


def vision_flops(v, tokens=None, patch_dim=None):
    """Forward FLOPs of one image through the image tower: patch stem 2N(p^2*3)d,
    the blocks, the MAP head. For B/16-224 (N = 196): 35.42 GFLOPs."""
    if tokens is None:
        size = v["image_size"]
        tokens = (size // v["patch_size"]) ** 2
    patch_dim = patch_dim or v["patch_size"] ** 2 * 3
    d, m = v["hidden_dim"], v["intermediate_dim"]
    return (2 * tokens * patch_dim * d + encoder_flops(tokens, d, v["num_layers"], m)
            + map_head_flops(tokens, d, m))


def text_flops(t, length=None):
    """Forward FLOPs of one text: the blocks over L tokens + the head 2 d d_proj (the
    token embedding is a gather). For B with L = 64: 11.03 GFLOPs."""
    length = length or t["max_sequence_length"]
    d = t["hidden_dim"]
    return encoder_flops(length, d, t["num_layers"], t["intermediate_dim"]) + 2 * d * t[
        "projection_dim"]


FLOPS_FORMULA = (
    "Forward FLOPs counted analytically (2 per multiply-add; norms, GELU and softmax not "
    "counted). Per transformer block over N tokens of width d with MLP width m: "
    "8Nd^2 + 4N^2d + 4Ndm. Image tower: 2N(3p^2)d (patch stem) + depth x block + MAP head "
    "(4d^2 + 4Nd^2 + 4Nd + 4dm). B/16-224: N = 196, d = 768, m = 3072, 12 blocks -> "
    "35.42 GFLOPs per image; B text tower at 64 tokens: 11.03 GFLOPs per text."
)

# ----------------------------------------------------------------- backend helpers


def backend_device():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend()
    return "cpu"


def compute_dtype():
    """float32 on CPU, bfloat16 on accelerators (as the issue asks)."""
    return "float32" if backend_device() == "cpu" else "bfloat16"


def jax_compiled_forward(model, inputs):
    """The best jitted path of a Keras model on JAX: `jax.jit` of `stateless_call`,
    compiled once for `inputs`. Returns (run() blocking callable, compiled)."""
    import jax

    def state():
        # Read the values at each call: Keras' own predict/fit functions donate the
        # variables' buffers and replace them.
        return ([v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables])

    inputs = jax.tree_util.tree_map(jax.numpy.asarray, inputs)

    def forward(trainable, non_trainable, inputs):
        return model.stateless_call(trainable, non_trainable, inputs)[0]

    compiled = jax.jit(forward).lower(*state(), inputs).compile()

    def run():
        return jax.block_until_ready(compiled(*state(), inputs))

    return run, compiled


def xla_flops(compiled):
    """FLOPs XLA's cost analysis counts for a compiled (or lowered) computation (None if
    unknown)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def matmul_contender(size, dtype="float32"):
    """(run, flops) of a jitted jnp.dot of two size x size matrices."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (size, size), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), dtype)
    compiled = jax.jit(jnp.dot).lower(a, b).compile()
    return (lambda: jax.block_until_ready(compiled(a, b))), 2.0 * size ** 3


def free_memory():
    gc.collect()
    try:
        import jax

        jax.clear_caches()
    except Exception:
        pass


# ----------------------------------------------------------------- model builders


def keras_hub_backbone(vision, text, dtype=None):
    """A random keras-hub SigLIPBackbone of the given sizes (our config keys)."""
    import keras_hub

    size = vision["image_size"]
    v = keras_hub.models.SigLIPVisionEncoder(
        patch_size=vision["patch_size"], hidden_dim=vision["hidden_dim"],
        num_layers=vision["num_layers"], num_heads=vision["num_heads"],
        intermediate_dim=vision["intermediate_dim"], image_shape=(size, size, 3),
        dtype=dtype, name="vision_encoder",
    )
    t = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=text["vocabulary_size"], embedding_dim=text["hidden_dim"],
        hidden_dim=text["hidden_dim"], num_layers=text["num_layers"],
        num_heads=text["num_heads"], intermediate_dim=text["intermediate_dim"],
        max_sequence_length=text["max_sequence_length"],
        projection_dim=text["projection_dim"], dtype=dtype, name="text_encoder",
    )
    return keras_hub.models.SigLIPBackbone(v, t, dtype=dtype)


def ours_from_keras_hub(kh_backbone, dtype=None):
    from keras_siglip2.convert.keras_hub import from_keras_hub

    return from_keras_hub(kh_backbone, dtype=dtype)


def transformers_model(vision, text):
    """A random transformers SiglipModel (torch) of the given sizes, in eval mode."""
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(
        text_config=dict(
            vocab_size=text["vocabulary_size"], hidden_size=text["hidden_dim"],
            intermediate_size=text["intermediate_dim"], num_hidden_layers=text["num_layers"],
            num_attention_heads=text["num_heads"],
            max_position_embeddings=text["max_sequence_length"],
            projection_size=text["projection_dim"], hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
        ),
        vision_config=dict(
            hidden_size=vision["hidden_dim"], intermediate_size=vision["intermediate_dim"],
            num_hidden_layers=vision["num_layers"], num_attention_heads=vision["num_heads"],
            image_size=vision["image_size"], patch_size=vision["patch_size"],
            hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
        ),
    )
    return SiglipModel(config).eval()


def copy_ours_into_transformers(ours, torch_model):
    """Loads our backbone's weights into a transformers SiglipModel.

    Inverts `keras_siglip2.convert.transformers.transformers_arrays` exactly without a
    second mapping table: that map only moves entries (transpose, reshape, slice,
    concatenate), so running it on a state dict whose entries are their own flat
    indices tells, for each of our variables, which torch entries it came from."""
    import torch

    from keras_siglip2.convert.transformers import infer_architecture, transformers_arrays

    state = torch_model.state_dict()
    keys = [k for k, v in state.items() if v.is_floating_point()]
    total = sum(state[k].numel() for k in keys)
    index_dtype = np.int32 if total < 2 ** 31 else np.int64
    index, offsets, start = {}, {}, 0
    for k in keys:
        n = state[k].numel()
        index[k] = np.arange(start, start + n, dtype=index_dtype).reshape(tuple(state[k].shape))
        offsets[k] = (start, n)
        start += n
    arch = infer_architecture(torch_model.config.to_dict(), index)
    mapping = transformers_arrays(index, arch)
    del index
    flat = np.full(total, np.nan, np.float32)
    variables = {v.path: v for v in ours.weights}
    for path, positions in mapping.items():
        flat[np.asarray(positions).ravel()] = np.asarray(
            variables[path].numpy(), np.float32).ravel()
    if np.isnan(flat).any():
        raise RuntimeError("Some transformers weights got no value from our backbone.")
    new_state = {k: torch.from_numpy(flat[s:s + n].reshape(tuple(state[k].shape)))
                 for k, (s, n) in offsets.items()}
    torch_model.load_state_dict(new_state, strict=False)
    return torch_model


def torch_forward(fn, *args):
    """Blocking no-grad call of a torch function."""
    import torch

    def run():
        with torch.inference_mode():
            out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out

    return run


def max_abs_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


# ------------------------------------------------------- reference computations

PURE_JAX = "pure-JAX encoder blocks (same math, reference)"
GEMMS_ONLY = "GEMMs only (same dense shapes, reference)"


def reference_contenders(v, batch, tokens=None, dtype="float32"):
    """Hand-written jax.numpy references at the image tower's shapes, to locate the
    overhead: `PURE_JAX` = the encoder blocks' exact math (pre-LN, fused qkv, softmax
    attention, tanh-GELU MLP) with no Keras in the way; `GEMMS_ONLY` = just the dense
    layers' matmuls (qkv, out, fc1, fc2) of every block. Returns ({name: run},
    {name: FLOPs per call})."""
    import jax
    import jax.numpy as jnp

    n = tokens or (v["image_size"] // v["patch_size"]) ** 2
    d, m, h, depth = v["hidden_dim"], v["intermediate_dim"], v["num_heads"], v["num_layers"]
    hd = d // h
    key = jax.random.PRNGKey(0)
    shapes = [(d, 3 * d), (d, d), (d, m), (m, d)]
    weights = [jax.random.normal(jax.random.fold_in(key, i), s, dtype) * 0.02
               for i, s in enumerate(shapes)]
    x = jax.random.normal(key, (batch * n, d), dtype)

    def norm(t):
        mu = t.mean(-1, keepdims=True)
        return (t - mu) * jax.lax.rsqrt(((t - mu) ** 2).mean(-1, keepdims=True) + 1e-6)

    def blocks(t, w):
        for _ in range(depth):
            qkv = (norm(t) @ w[0]).reshape(batch, n, 3, h, hd)
            scores = jnp.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0], qkv[:, :, 1]) / math.sqrt(hd)
            attended = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1),
                                  qkv[:, :, 2])
            t = t + attended.reshape(batch * n, d) @ w[1]
            t = t + jax.nn.gelu(norm(t) @ w[2], approximate=True) @ w[3]
        return t

    def gemms(t, w):
        for _ in range(depth):
            qkv = t @ w[0]
            t = t + qkv[:, :d] @ w[1]
            t = t + (t @ w[2]) @ w[3]
        return t

    runs, flops = {}, {}
    for name, fn, count in (
        (PURE_JAX, blocks, encoder_flops(n, d, depth, m) * batch),
        (GEMMS_ONLY, gemms, depth * batch * n * (8 * d * d + 4 * d * m)),
    ):
        compiled = jax.jit(fn).lower(x, weights).compile()
        runs[name] = lambda c=compiled: jax.block_until_ready(c(x, weights))
        flops[name] = count
    return runs, flops
