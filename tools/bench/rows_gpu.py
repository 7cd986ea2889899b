"""Row 6: the GPU row (bfloat16 inference, flash attention on and off, MFU), not available without an accelerator."""

import statistics

import numpy as np

from tools.bench.common import NotAvailable, alternate, backend_device, entry, free_memory, jax_compiled_forward, matmul_contender, row, vision_flops




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
