"""Rows 1-2: inference throughput against keras-hub and transformers, and the achieved FLOP/s against the measured matmul peak."""

import os
import statistics

import numpy as np

from tools.bench.common import FLOPS_FORMULA, GEMMS_ONLY, PURE_JAX, alternate, compute_dtype, copy_ours_into_transformers, entry, free_memory, jax_compiled_forward, keras_hub_backbone, matmul_contender, max_abs_diff, ours_from_keras_hub, paired_ratio, progress, reference_contenders, row, text_flops, torch_forward, transformers_model, vision_flops, xla_flops




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
