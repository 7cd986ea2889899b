#!/usr/bin/env python
"""Benchmark of keras-siglip2 (issue 8): measured speed against keras-hub, transformers
and the machine's own matmul peak, for the SigLIP 2 models (arXiv 2502.14786: the
towers of sec. 2, NaFlex of sec. 2.4, the training recipe of sec. 2.1-2.3).

One run on the current machine prints one table and writes it as JSON and Markdown
(`docs/benchmarks.json`, `docs/benchmarks.md` by default). Ratios stay meaningful on a
noisy shared machine: the contenders of a row are timed in alternation (round-robin,
the order rotating every round), several rounds, and each ratio is the median of the
per-round ratios (paired), each throughput the median of its rounds.

Rows are functions in a registry (`ROWS`); a row whose code has not landed yet in the
package reports "not available" instead of failing. Usage:

    KERAS_BACKEND=jax python tools/benchmark.py                 # everything (make bench)
    KERAS_BACKEND=jax python tools/benchmark.py --quick --out /tmp/b   # smoke run
    KERAS_BACKEND=jax python tools/benchmark.py --rows inference,flops
"""

import argparse
import datetime
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runs from a clean clone without installing
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

# --------------------------------------------------------------------------- configs

B16_VISION = dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12,
                  intermediate_dim=3072, image_size=224)
B_TEXT = dict(vocabulary_size=256000, hidden_dim=768, num_layers=12, num_heads=12,
              intermediate_dim=3072, projection_dim=768, max_sequence_length=64)
TINY_VISION = dict(patch_size=8, hidden_dim=64, num_layers=2, num_heads=4,
                   intermediate_dim=128, image_size=32)
TINY_TEXT = dict(vocabulary_size=1000, hidden_dim=64, num_layers=2, num_heads=4,
                 intermediate_dim=128, projection_dim=64, max_sequence_length=16)

FULL = {
    "name": "full",
    # 9 rounds: on a shared 2-core machine two 5-round runs gave paired ratios 5-10 %
    # apart; the median of 9 is steadier and the whole run stays near 8 min.
    "repeats": 9,
    "min_seconds": 0.5,  # each timed sample loops the call until it lasts this long
    "matmul_size": 2048,
    # Batches sized so that `make bench` stays under 15 min on a 2-core machine; the
    # Keras `predict_on_batch` path is timed in the quick config only (it matched the
    # jitted path within 1 % at batch 8 in an earlier full run).
    "inference": {"arch": "B/16-224", "vision": B16_VISION, "text": B_TEXT,
                  "image_batch": 4, "text_batch": 16, "predict_on_batch": False},
    "naflex": {"arch": "B/16 NaFlex", "vision": dict(patch_size=16, hidden_dim=768,
               num_layers=12, num_heads=12, intermediate_dim=3072, position_grid_size=16),
               "resize_batch": 64, "resize_length": 256,
               "forward": [(256, 2), (1024, 2)], "repeats": 5},
    # Depth 6: compiling the four train steps dominates this row (about 2 min at depth 12).
    "training": {"arch": "Ti/16-224 towers at depth 6 (width 192, 3 heads, MLP 768), "
                         "text length 64, vocabulary 32,000",
                 "vision": dict(patch_size=16, hidden_dim=192, num_layers=6, num_heads=3,
                                intermediate_dim=768, image_size=224),
                 "text": dict(vocabulary_size=32000, hidden_dim=192, num_layers=6,
                              num_heads=3, intermediate_dim=768, projection_dim=192,
                              max_sequence_length=64),
                 "batch": 8, "repeats": 9, "local_crops": 8, "local_image_size": 96,
                 "pipeline_images": 64,
                 "source_size": 256, "pipeline_batches": 4},
    "loss_memory": {"batches": [4096, 16384], "dim": 768, "chunk_size": 1024},
    # The LocCa decoder's loss at the paper's sizes: Gemma's 256k vocabulary + 1,024
    # location bins, B = 256 captions of 64 tokens, decoder width 768 (B-sized).
    "decoder_loss_memory": {"batch": 256, "length": 64, "width": 768,
                            "vocabulary": 257024, "chunk": 16384},
    "gpu": {"archs": {"B/16-224": (B16_VISION, B_TEXT),
                      "So400m/14-384": (dict(patch_size=14, hidden_dim=1152, num_layers=27,
                                             num_heads=16, intermediate_dim=4304,
                                             image_size=384),
                                        dict(B_TEXT, hidden_dim=1152, num_layers=27,
                                             num_heads=16, intermediate_dim=4304,
                                             projection_dim=1152))},
            "image_batch": 64, "matmul_size": 8192},
}

QUICK = {
    "name": "quick",
    "repeats": 2,
    "min_seconds": 0.02,
    "matmul_size": 256,
    "inference": {"arch": "tiny (width 64, 2 layers, 32 px)", "vision": TINY_VISION,
                  "text": TINY_TEXT, "image_batch": 4, "text_batch": 4,
                  "predict_on_batch": True},
    "naflex": {"arch": "tiny NaFlex", "vision": dict(patch_size=8, hidden_dim=64,
               num_layers=2, num_heads=4, intermediate_dim=128, position_grid_size=4),
               "resize_batch": 8, "resize_length": 16, "forward": [(16, 2), (32, 2)],
               "repeats": 2},
    "training": {"arch": "tiny (width 64, 2 layers, 32 px)", "vision": TINY_VISION,
                 "text": TINY_TEXT, "batch": 4, "repeats": 2, "local_crops": 2,
                 "local_image_size": 16,
                 "pipeline_images": 8, "source_size": 48, "pipeline_batches": 2},
    "loss_memory": {"batches": [256, 1024], "dim": 64, "chunk_size": 128},
    "decoder_loss_memory": {"batch": 8, "length": 16, "width": 64, "vocabulary": 4096,
                            "chunk": 512},
    "gpu": {"archs": {"tiny": (TINY_VISION, TINY_TEXT)}, "image_batch": 4,
            "matmul_size": 256},
}

# ----------------------------------------------------------------- registry and entries

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


def alternate(contenders, repeats, min_seconds):
    """Times zero-argument callables in alternation.

    Each callable runs its work to completion (blocking). Two warm-up calls each
    (compilation, then sizing: a sample repeats the call until it lasts `min_seconds`),
    then `repeats` rounds; every round times each contender once, the order rotating.

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


# --------------------------------------------------------------- row 1: inference


def _inference_contenders(ours_tower, kh_tower, torch_tower, inputs, torch_inputs,
                          include_user_path=True):
    contenders, compiled = {}, {}
    run, compiled["ours"] = jax_compiled_forward(ours_tower, inputs)
    contenders["keras_siglip2 (jit)"] = run
    if kh_tower is not None:
        run, compiled["keras-hub"] = jax_compiled_forward(kh_tower, inputs)
        contenders["keras-hub (jit)"] = run
    if include_user_path:
        contenders["keras_siglip2 (predict_on_batch)"] = lambda: ours_tower.predict_on_batch(
            inputs)
        if kh_tower is not None:
            contenders["keras-hub (predict_on_batch)"] = lambda: kh_tower.predict_on_batch(
                inputs)
    if torch_tower is not None:
        contenders["transformers (torch)"] = torch_forward(
            lambda x: torch_tower(x).pooler_output, torch_inputs)
    return contenders, compiled


def _throughput_entries(kind, unit, batch, timing, flops_each, xla):
    m = timing["median_s"]
    out = []
    for name in m:
        if name.startswith("matmul") or name in (PURE_JAX, GEMMS_ONLY):
            continue
        out.append(entry(f"{kind}: {name}", batch / m[name], unit,
                         note=f"batch {batch}; first call {timing['first_s'][name]:.2f} s"))
    pairs = [
        ("keras_siglip2 (jit)", "keras-hub (jit)", 1.05),
        ("keras_siglip2 (predict_on_batch)", "keras-hub (predict_on_batch)", 1.05),
        ("keras_siglip2 (jit)", "transformers (torch)", 1.1),
    ]
    for a, b, target in pairs:
        if a in m and b in m:
            out.append(entry(f"{kind}: {a} / {b}", batch / m[a], unit,
                             ratio=paired_ratio(timing, a, b), vs=b,
                             target=(">=", target)))
    if xla:
        out.append(entry(f"{kind}: forward GFLOPs analytic / XLA cost analysis",
                         flops_each / 1e9, "GFLOPs per item", ratio=flops_each * batch / xla,
                         note=f"XLA counts {xla / batch / 1e9:.2f} GFLOPs per item "
                              "(it also counts elementwise ops)"))
    return out


@row("inference", "Inference throughput (images/s, texts/s)")
def row_inference(cfg, ctx):
    import keras

    spec = cfg["inference"]
    vision, text = spec["vision"], spec["text"]
    dtype = compute_dtype()
    keras.utils.set_random_seed(0)
    progress(f"inference: building keras-hub {spec['arch']} (random) and converting it")
    kh = keras_hub_backbone(vision, text, dtype=dtype)
    ours = ours_from_keras_hub(kh, dtype=dtype)
    notes = [f"{spec['arch']} architecture, random weights, {dtype}; keras_siglip2 gets "
             "keras-hub's weights through keras_siglip2.convert.from_keras_hub."]
    torch_model = None
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        progress("inference: building transformers SiglipModel and copying the weights")
        torch_model = copy_ours_into_transformers(ours, transformers_model(vision, text))
        if torch.cuda.is_available():
            torch_model = torch_model.to("cuda", dtype=torch.bfloat16)
        notes.append(
            f"transformers SiglipModel (torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, attention "
            f"{getattr(torch_model.config, '_attn_implementation', '?')}) gets the same "
            "weights (copied from keras_siglip2); timed under torch.inference_mode().")
    except ImportError as e:
        notes.append(f"transformers/torch not installed ({e}): no torch contender.")

    rng = np.random.RandomState(0)
    size = vision["image_size"]
    images = rng.uniform(-1, 1, (spec["image_batch"], size, size, 3)).astype(np.float32)
    tokens = rng.randint(0, text["vocabulary_size"],
                         (spec["text_batch"], text["max_sequence_length"])).astype(np.int32)
    torch_images = torch_tokens = None
    if torch_model is not None:
        import torch

        device = next(torch_model.parameters()).device
        torch_images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(
            device, dtype=next(torch_model.parameters()).dtype)
        torch_tokens = torch.from_numpy(tokens.astype(np.int64)).to(device)

    entries = []
    for kind, unit, batch, ours_t, kh_t, torch_t, x, tx, flops_each in (
        ("images", "images/s", spec["image_batch"], ours.vision_encoder,
         kh.vision_encoder, torch_model and torch_model.vision_model, {"images": images},
         torch_images, vision_flops(vision)),
        ("texts", "texts/s", spec["text_batch"], ours.text_encoder,
         kh.text_encoder, torch_model and torch_model.text_model, {"token_ids": tokens},
         torch_tokens, text_flops(text)),
    ):
        progress(f"inference: compiling the {kind} contenders")
        contenders, compiled = _inference_contenders(
            ours_t, kh_t, torch_t, x, tx, include_user_path=spec["predict_on_batch"])
        matmul, work = None, {name: flops_each * batch for name in contenders}
        if kind == "images":  # the hardware limit and references, in the same rounds
            run, mm_flops = matmul_contender(cfg["matmul_size"])
            matmul = f"matmul {cfg['matmul_size']}^2 (jnp.dot, jit)"
            contenders[matmul] = run
            runs, flops = reference_contenders(vision, batch)
            contenders.update(runs)
            work.update(flops)
        progress(f"inference: timing {len(contenders)} {kind} contenders x "
                 f"{cfg['repeats']} rounds")
        timing = alternate(contenders, cfg["repeats"], cfg["min_seconds"])
        out = timing["outputs"]
        ref = np.asarray(out["keras_siglip2 (jit)"], np.float32)
        scale = float(np.max(np.abs(ref))) or 1.0
        for name in ("keras-hub (jit)", "transformers (torch)"):
            if name in out:
                other = out[name]
                other = other.float().cpu().numpy() if hasattr(other, "cpu") else other
                entries.append(entry(f"{kind}: same outputs, keras_siglip2 vs {name}",
                                     max_abs_diff(ref, other) / scale, "max |diff| / max |out|",
                                     note="checks that the contenders compute the same "
                                          "function"))
        xla = xla_flops(compiled["ours"])
        entries += _throughput_entries(kind, unit, batch, timing, flops_each, xla)
        ctx[f"inference_{kind}"] = {"timing": timing, "work": work, "matmul": matmul,
                                    "matmul_flops": mm_flops if matmul else None}
        del contenders, compiled, timing, out
        free_memory()
    ctx["notes"].setdefault("inference", []).extend(notes)
    del kh, ours, torch_model
    free_memory()
    return entries


# ------------------------------------------------------------ row 2: FLOP/s vs peak


@row("flops", "Achieved FLOP/s of the image forward / measured matmul peak")
def row_flops(cfg, ctx):
    data = ctx.get("inference_images")
    if data is None:  # run alone: measure our jitted forward against the matmul here
        import keras

        spec = cfg["inference"]
        from keras_siglip2.convert.common import build_backbone

        keras.utils.set_random_seed(0)
        model = build_backbone(dict(spec["vision"], type="fixed"), spec["text"],
                               dtype=compute_dtype()).vision_encoder
        size, batch = spec["vision"]["image_size"], spec["image_batch"]
        images = np.random.RandomState(0).uniform(
            -1, 1, (batch, size, size, 3)).astype(np.float32)
        run, _ = jax_compiled_forward(model, {"images": images})
        mm, mm_flops = matmul_contender(cfg["matmul_size"])
        matmul = f"matmul {cfg['matmul_size']}^2 (jnp.dot, jit)"
        contenders = {"keras_siglip2 (jit)": run, matmul: mm}
        work = {"keras_siglip2 (jit)": vision_flops(spec["vision"]) * batch}
        runs, flops = reference_contenders(spec["vision"], batch)
        contenders.update(runs)
        work.update(flops)
        timing = alternate(contenders, cfg["repeats"], cfg["min_seconds"])
        data = {"timing": timing, "work": work, "matmul": matmul, "matmul_flops": mm_flops}
    timing, matmul, work = data["timing"], data["matmul"], data["work"]
    peak = data["matmul_flops"] / timing["median_s"][matmul]
    ctx["peak_flops"] = peak
    entries = [entry(f"peak: {matmul}", peak / 1e9, "GFLOP/s",
                     note="median of the rounds, measured alternating with the forwards")]
    for name, flops in work.items():
        achieved = flops / timing["median_s"][name]
        # paired: (work / t_model) / (matmul work / t_matmul), median over rounds
        fraction = statistics.median(
            (flops / s[name]) / (data["matmul_flops"] / s[matmul]) for s in timing["rounds"])
        target = (">=", 0.9) if name == "keras_siglip2 (jit)" else None
        entries.append(entry(f"images: {name} achieved / peak", achieved / 1e9, "GFLOP/s",
                             ratio=fraction, vs="matmul peak", target=target))
    if PURE_JAX in work:
        entries.append(entry(
            "images: keras_siglip2 (jit) / pure-JAX reference, per FLOP",
            None, "", ratio=statistics.median(
                (work["keras_siglip2 (jit)"] / s["keras_siglip2 (jit)"])
                / (work[PURE_JAX] / s[PURE_JAX]) for s in timing["rounds"]),
            vs=PURE_JAX, note="1.0 = no overhead from Keras / the layer code"))
    ctx["notes"].setdefault("flops", []).extend([FLOPS_FORMULA, (
        "References timed in the same rounds: " + PURE_JAX + " = the 12 blocks written "
        "directly in jax.numpy; " + GEMMS_ONLY + " = only the qkv/out/fc1/fc2 matmuls of "
        "the blocks, i.e. the best any implementation of these dense shapes reaches on "
        "this machine with XLA.")])
    return entries


# ----------------------------------------------------------------- row 3: NaFlex


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
        return (lambda p, m: pg.position_embeddings(grid, p, m),
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


# --------------------------------------------------------------- row 4: training


def sigmoid_loss_on_logits(y_true, y_pred):
    """-sum(log_sigmoid(labels * logits)) / B with labels 2I - 1 given in y_true: the
    sigmoid loss (paper sec. 2.1), as a Keras loss on the (B, B) logits."""
    from keras import ops

    y_true = ops.cast(y_true, y_pred.dtype)
    return -ops.sum(ops.log_sigmoid(y_true * y_pred)) / ops.cast(ops.shape(y_pred)[0],
                                                                  y_pred.dtype)


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
    kh.compile()  # keras-hub's defaults: AdamW(1e-3, weight_decay=1e-4), SigLIPLoss
    ours.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                 loss={"vision_logits": sigmoid_loss_on_logits})
    rng = np.random.RandomState(0)
    size = vision["image_size"]
    x = {"images": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
         "token_ids": rng.randint(0, text["vocabulary_size"],
                                  (batch, text["max_sequence_length"])).astype(np.int32)}
    labels = (2 * np.eye(batch) - 1).astype(np.float32)
    fit_ours = "keras_siglip2 SigLIP2Backbone.fit step (sigmoid)"
    fit_kh = "keras-hub SigLIPBackbone.fit step"
    contenders = {
        fit_ours: lambda: ours.train_on_batch(x, {"vision_logits": labels}),
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
        "after start_self_distillation() (the 80 % stage); LocCa fields are random token "
        "ids.")
    free_memory()
    return entries


PRETRAINER_SIGMOID = "SigLIP2Pretrainer step (sigmoid only)"
PRETRAINER_FULL = "SigLIP2Pretrainer step (full recipe)"


def _pretrainer_contenders(backbone, x, spec, rng):
    """Train steps of SigLIP2Pretrainer, sigmoid only and full recipe (SILC / TIPS
    switched on), on `backbone` (shared: only the step's speed is measured)."""
    pretrainer_cls = require("keras_siglip2.training.pretrainer", "SigLIP2Pretrainer")
    batch = x["images"].shape[0]
    sigmoid = pretrainer_cls(backbone, decoder=None, self_distillation=False,
                             masked_prediction=False, seed=0)
    sigmoid.compile(total_steps=10_000)
    local_size = spec["local_image_size"]
    full = pretrainer_cls(backbone, decoder="locca", self_distillation=True,
                          masked_prediction=True, seed=0, local_image_size=local_size)
    full.compile(total_steps=10_000)
    full.start_self_distillation()
    length = x["token_ids"].shape[1]
    vocab = full.decoder.vocabulary_size
    full_x = dict(
        x,
        decoder_token_ids=rng.randint(0, vocab, (batch, length)).astype(np.int32),
        decoder_targets=rng.randint(0, vocab, (batch, length)).astype(np.int32),
        decoder_weights=np.ones((batch, length), np.float32),
        local_images=rng.uniform(
            -1, 1, (batch, spec["local_crops"], local_size, local_size, 3)).astype(np.float32),
    )
    contenders = {PRETRAINER_SIGMOID: lambda: sigmoid.train_on_batch(x),
                  PRETRAINER_FULL: lambda: full.train_on_batch(full_x)}
    return contenders, {PRETRAINER_SIGMOID: (sigmoid, x), PRETRAINER_FULL: (full, full_x)}


def jax_train_step_flops(model, x):
    """FLOPs of one compiled-by-fit train step of `model` on batch `x` (JAX, after a
    first `train_on_batch` built the state): XLA's cost analysis of the lowered step
    (before optimization; includes the backward pass and the optimizer update). Uses
    Keras' JAX trainer state layout (`_get_jax_state`), a private API: None if absent."""
    import jax
    import keras

    get_state = getattr(model, "_get_jax_state", None)
    if get_state is None or keras.backend.backend() != "jax":
        return None
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


# ------------------------------------------------------------ row 5: loss memory


def compiled_memory(fn, *shapes):
    """Peak bytes XLA plans for `fn` on arguments of the given ShapeDtypeStructs (compiled,
    never run): temporaries + arguments + outputs (aliases counted once)."""
    import jax

    compiled = jax.jit(fn).lower(*shapes).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        raise NotAvailable("this JAX backend gives no memory analysis")
    temp = int(stats.temp_size_in_bytes)
    total = temp + int(stats.argument_size_in_bytes) + int(stats.output_size_in_bytes) - int(
        getattr(stats, "alias_size_in_bytes", 0))
    return temp, total


@row("loss_memory", "Sigmoid loss memory: plain vs chunked vs distributed (compiled)")
def row_loss_memory(cfg, ctx):
    import jax

    plain = require("keras_siglip2.training.losses.sigmoid", "sigmoid_loss")
    chunked = require("keras_siglip2.training.losses.sigmoid", "chunked_sigmoid_loss")
    spec = cfg["loss_memory"]
    d, chunk = spec["dim"], spec["chunk_size"]
    forms = {
        "plain": plain,
        f"chunked (chunk {chunk})": lambda i, t, s, b: chunked(i, t, s, b, chunk_size=chunk),
    }
    entries = []
    distributed = _distributed_loss_memory(spec)
    for batch in spec["batches"]:
        emb = jax.ShapeDtypeStruct((batch, d), np.float32)
        scalar = jax.ShapeDtypeStruct((), np.float32)
        for name, fn in forms.items():
            grad = jax.value_and_grad(fn, argnums=(0, 1, 2, 3))
            temp, total = compiled_memory(grad, emb, emb, scalar, scalar)
            block = (batch, batch) if name == "plain" else (batch, min(chunk, batch))
            entries.append(entry(
                f"batch {batch}: {name}, loss + gradients, one device", temp / 2 ** 20,
                "MiB temporaries", ratio=temp / (4 * block[0] * block[1]),
                vs=f"one {block[0]} x {block[1]} float32 logits block",
                note=f"with arguments and outputs {total / 2 ** 20:,.0f} MiB"))
        if isinstance(distributed, dict) and str(batch) in distributed["batches"]:
            temp, total = distributed["batches"][str(batch)]
            n = distributed["devices"]
            b = batch // n
            entries.append(entry(
                f"batch {batch}: distributed (ring over {n} devices), per device",
                temp / 2 ** 20, "MiB temporaries", ratio=temp / (4 * b * b),
                vs=f"one {b} x {b} float32 logits block",
                note=f"with arguments and outputs {total / 2 ** 20:,.0f} MiB"))
    if not isinstance(distributed, dict):
        entries.append(unavailable("distributed form", distributed))
    ctx["notes"].setdefault("loss_memory", []).append(
        f"Embedding width {d}; XLA's compiled memory analysis of jax.value_and_grad of the "
        "loss (compiled, never run): temporary buffers. The distributed form is compiled "
        "on simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count) in a "
        "subprocess; its figures are per device. The ratio is temporaries / the logits "
        "block each form holds (B x B plain, B x chunk chunked, (B/n) x (B/n) per device "
        "distributed): bounded ratios across B show the O(block) memory.")
    return entries


@row("decoder_loss_memory", "LocCa decoder loss memory: logits vs vocabulary chunks (compiled)")
def row_decoder_loss_memory(cfg, ctx):
    import jax

    locca = require("keras_siglip2.training.losses.locca", "locca_loss")
    from_features = require("keras_siglip2.training.losses.locca", "locca_loss_from_features")
    spec = cfg["decoder_loss_memory"]
    b, length, d, v, chunk = (spec[k] for k in ("batch", "length", "width", "vocabulary",
                                                 "chunk"))
    shapes = (jax.ShapeDtypeStruct((b, length, d), np.float32),
              jax.ShapeDtypeStruct((d, v), np.float32), jax.ShapeDtypeStruct((v,), np.float32),
              jax.ShapeDtypeStruct((b, length), np.int32),
              jax.ShapeDtypeStruct((b, length), np.float32))
    forms = {
        "plain (B x L x V logits)": lambda h, w, bias, t, m: locca(
            jax.numpy.einsum("bld,dv->blv", h, w) + bias, t, m),
        f"chunked (vocabulary blocks of {chunk})": lambda h, w, bias, t, m: from_features(
            h, w, bias, t, m, vocabulary_chunk=chunk),
    }
    logits_bytes = 4 * b * length * v
    entries = []
    for name, fn in forms.items():
        temp, total = compiled_memory(jax.value_and_grad(fn, argnums=(0, 1, 2)), *shapes)
        entries.append(entry(
            f"B={b}, L={length}, V={v:,}: {name}, loss + gradients", temp / 2 ** 20,
            "MiB temporaries", ratio=temp / logits_bytes,
            vs=f"the float32 logits ({logits_bytes / 2 ** 20:,.0f} MiB)",
            note=f"with arguments and outputs {total / 2 ** 20:,.0f} MiB"))
    ctx["notes"].setdefault("decoder_loss_memory", []).append(
        f"Decoder width {d}; XLA's compiled memory analysis of jax.value_and_grad of the "
        "LocCa cross-entropy w.r.t. the features, the output kernel and its bias (compiled, "
        "never run). The chunked form (`locca_loss_from_features`, the pretrainer's) walks "
        "the vocabulary with a running log-sum-exp and recomputes each block in its "
        "custom gradient: it holds one (B*L) x chunk block, not the B x L x V logits.")
    return entries


DISTRIBUTED_DEVICES = 8


def _distributed_loss_memory(spec):
    """{"devices": n, "batches": {B: (temp, total)}} from a subprocess with simulated
    devices, or the reason (str) it is not available."""
    import subprocess

    try:
        require("keras_siglip2.training.losses.distributed", "ring_sigmoid_loss_fn")
    except NotAvailable as e:
        return str(e)
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                          f"device_count={DISTRIBUTED_DEVICES}").strip(),
               JAX_PLATFORMS="cpu")
    args = {"batches": spec["batches"], "dim": spec["dim"], "devices": DISTRIBUTED_DEVICES}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", "distributed_loss_memory",
         "--child-args", json.dumps(args)],
        env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"distributed loss subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_distributed_loss_memory(args):
    """(In the subprocess.) Compiles the ring loss + gradients over a 1-D mesh."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from keras_siglip2.training.losses.distributed import ring_sigmoid_loss_fn

    n = args["devices"]
    if len(jax.devices()) < n:
        raise RuntimeError(f"expected {n} simulated devices, got {len(jax.devices())}")
    mesh = Mesh(np.array(jax.devices()[:n]), ("batch",))
    fn = ring_sigmoid_loss_fn(mesh, "batch")
    grad = jax.value_and_grad(fn, argnums=(0, 1, 2, 3))
    sharded = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())
    out = {}
    for batch in args["batches"]:
        emb = jax.ShapeDtypeStruct((batch, args["dim"]), np.float32, sharding=sharded)
        scalar = jax.ShapeDtypeStruct((), np.float32, sharding=replicated)
        out[str(batch)] = compiled_memory(grad, emb, emb, scalar, scalar)
    print(json.dumps({"devices": n, "batches": out}))


CHILDREN = {"distributed_loss_memory": child_distributed_loss_memory}


# --------------------------------------------------------------- row 6: GPU


@row("gpu", "GPU: bfloat16 inference, flash attention on/off, MFU")
def row_gpu(cfg, ctx):
    import keras

    device = backend_device()
    if device == "cpu":
        raise NotAvailable("no accelerator on this machine (JAX backend: cpu)")
    from keras_siglip2.convert.common import build_backbone

    spec = cfg["gpu"]
    entries = []
    mm, mm_flops = matmul_contender(spec["matmul_size"], "bfloat16")
    for arch, (vision, text) in spec["archs"].items():
        keras.utils.set_random_seed(0)
        tower = build_backbone(dict(vision, type="fixed"), dict(text, vocabulary_size=32000),
                               dtype="bfloat16").vision_encoder
        size = vision["image_size"]
        images = np.random.RandomState(0).uniform(
            -1, 1, (spec["image_batch"], size, size, 3)).astype(np.float32)
        contenders = {"matmul": mm}
        for flash in (True, False):
            (keras.config.enable_flash_attention if flash
             else keras.config.disable_flash_attention)()
            run, _ = jax_compiled_forward(tower, {"images": images})
            contenders[f"flash {'on' if flash else 'off'}"] = run
        keras.config.enable_flash_attention()
        timing = alternate(contenders, cfg["repeats"], cfg["min_seconds"])
        work = vision_flops(vision) * spec["image_batch"]
        for name in ("flash on", "flash off"):
            t = timing["median_s"][name]
            mfu = statistics.median((work / s[name]) / (mm_flops / s["matmul"])
                                    for s in timing["rounds"])
            entries.append(entry(f"{arch} images, bfloat16, {name}", spec["image_batch"] / t,
                                 "images/s", ratio=mfu, vs="bf16 matmul peak (MFU)",
                                 target=(">=", 0.5) if arch.startswith("B/16") else None))
        del tower, contenders
        free_memory()
    return entries


# ------------------------------------------------------------------ report


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = round(int(f.readline().split()[1]) / 2 ** 20, 1)
    except (OSError, ValueError, IndexError):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "keras_backend": os.environ.get("KERAS_BACKEND"),
        "accelerator": None,
        "load_average_at_start": _load_average(),
        "versions": {n: _version(n) for n in (
            "keras", "jax", "jaxlib", "torch", "transformers", "keras-hub", "tensorflow",
            "keras-siglip2")},
    }
    try:
        import jax

        dev = jax.devices()[0]
        if dev.platform != "cpu":
            info["accelerator"] = f"{dev.platform}: {dev.device_kind}"
    except Exception:
        pass
    return info


def _fmt(x, digits=3):
    if x is None:
        return ""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def table_rows(report):
    """[(row, measurement, value, ratio, target, met, note)] strings for the table."""
    out = []
    for name, r in report["rows"].items():
        if r["status"] != "ok":
            out.append((name, r["title"], r["status"], "", "", "", r.get("reason") or ""))
            continue
        for e in r["entries"]:
            value = f"{_fmt(e['value'])} {e['unit']}".strip() if e["value"] is not None else ""
            ratio = f"{_fmt(e['ratio'])}" + (f" vs {e['vs']}" if e["vs"] else "") \
                if e["ratio"] is not None else ""
            met = {True: "yes", False: "NO", None: ""}[e["met"]]
            out.append((name, e["label"], value, ratio, e["target"] or "", met,
                        e["note"] or ""))
    return out


def print_table(report):
    rows = table_rows(report)
    header = ("row", "measurement", "value", "ratio", "target", "met")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
              for i in range(6)]
    widths = [min(w, 70) for w in widths]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c)[:w].ljust(w) for c, w in zip(r[:6], widths)))


def markdown(report):
    meta = report["meta"]
    v = meta["versions"]
    lines = [
        "# keras-siglip2 benchmarks",
        "",
        f"Generated by `make bench` (`tools/benchmark.py`, config `{report['config']}`) on "
        f"{report['date']} in {report['seconds']:.0f} s"
        + ("." if report.get("complete", True) else " (INCOMPLETE: the run stopped early)."),
        "",
        f"- Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB RAM"
        + (f", {meta['accelerator']}" if meta["accelerator"] else ", no accelerator")
        + f"; {meta['platform']}; load average (1, 5, 15 min) at start "
        f"{meta['load_average_at_start']}, at end {meta.get('load_average_at_end')}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val)
        + f"; Python {meta['python']}; Keras backend {meta['keras_backend']}",
        "- Method: the contenders of each row are timed in alternation, "
        f"{report['repeats']} rounds (order rotating); values are medians over the rounds, "
        "ratios are medians of the per-round ratios (> 1 means the first named is faster).",
    ]
    if report.get("caveat"):
        lines.append(f"- Caveat: {report['caveat']}")
    lines += ["", "| row | measurement | value | ratio | target | met | note |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in table_rows(report):
        cells = [c.replace("|", "\\|") for c in r]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if report["notes"]:
        lines += ["## Notes", ""]
        for name, notes in report["notes"].items():
            for n in notes:
                lines.append(f"- **{name}**: {n}")
        lines.append("")
    return "\n".join(lines)


def write_reports(report, out, seconds, final):
    """Writes benchmarks.json / .md into `out` (after every row, so that a run cut
    short keeps the rows it finished; `report["complete"]` tells which)."""
    report["seconds"] = seconds
    report["complete"] = final
    report["meta"]["load_average_at_end"] = _load_average()
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "benchmarks.md").write_text(markdown(report))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny models and few rounds: the smoke run of the test suite")
    p.add_argument("--rows", default=",".join(ROWS),
                   help=f"comma-separated rows to run, from: {', '.join(ROWS)}")
    p.add_argument("--out", default=None,
                   help="directory for benchmarks.json and benchmarks.md (default: docs/, "
                        "or build/bench-quick/ with --quick so that a smoke run never "
                        "replaces the published figures)")
    p.add_argument("--repeats", type=int, default=None, help="rounds per row (override)")
    p.add_argument("--caveat", default=None,
                   help="a sentence printed with the results (e.g. machine load)")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be >= 1; got {args.repeats}")
    args.rows = rows
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        CHILDREN[args.child](json.loads(args.child_args))
        return 0
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats is not None:
        cfg["repeats"] = args.repeats
        for key in ("naflex", "training"):
            cfg[key] = dict(cfg[key], repeats=args.repeats)
    start = _now()
    ctx = {"notes": {}}
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": cfg["name"],
        "repeats": cfg["repeats"],
        "caveat": args.caveat,
        "meta": machine_info(),
        "rows": {},
        "notes": ctx["notes"],
    }
    failed = False
    out = Path(args.out) if args.out else ROOT / ("build/bench-quick" if args.quick else "docs")
    for name in args.rows:
        title, fn = ROWS[name]
        t0 = _now()
        progress(f"row {name}: {title}")
        try:
            result = {"status": "ok", "entries": fn(cfg, ctx)}
        except NotAvailable as e:
            result = {"status": "not available", "reason": str(e)}
        except Exception as e:  # report it, keep going, exit non-zero at the end
            traceback.print_exc()
            failed = True
            result = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:300]}
        result.update(title=title, seconds=round(_now() - t0, 1))
        for line in table_rows({"rows": {name: result}}):
            progress("  " + " | ".join(c for c in line[1:6] if c))
        report["rows"][name] = result
        free_memory()
        write_reports(report, out, _now() - start, final=False)  # survives a later crash
    write_reports(report, out, _now() - start, final=True)
    print_table(report)
    progress(f"wrote {out / 'benchmarks.json'} and {out / 'benchmarks.md'} "
             f"({report['seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
