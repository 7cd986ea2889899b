"""Row "profile": where the image tower's forward (paper sec. 2, the ViT + MAP head)
spends its time on this machine, op by op, from `jax.profiler` (issue 19 item 3: profile
before optimizing). The compiled forward runs under the profiler; each XLA op's time is
summed over threads and grouped as GEMM (YNNPACK / oneDNN / Eigen dot fusions, the
convolutions) or not; the non-GEMM ops are named by the model code they come from
(the `op_name` metadata of the optimized HLO)."""

import collections
import glob
import re
import tempfile

import numpy as np

from tools.bench.common import NotAvailable, entry, jax_compiled_forward, progress, row

GEMM_PREFIXES = ("ynn_fusion", "dot", "convolution", "onednn", "custom-call")
# Profiler events that are not XLA ops (the executor, thread pools, Python frames).
NOT_OPS = ("ThunkExecutor", "SlinkyThreadPool", "$", "end: ")


def _xspace(path):
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2  # lazy: optional, TF's proto
    except ImportError as e:
        raise NotAvailable(f"reading the jax.profiler trace needs TensorFlow's protos ({e})")
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    return space


def op_times(run, calls):
    """{XLA op name: ms per call, summed over threads} of `calls` profiled calls."""
    import jax

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(calls):
            run()
        jax.profiler.stop_trace()
        path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
        space = _xspace(path)
    times = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                name = names[event.metadata_id].name
                if not name.startswith(NOT_OPS):
                    times[name] += event.duration_ps / 1e9 / calls
    return times


def hlo_sources(hlo_text):
    """{HLO instruction name: model-code source} from the `op_name` metadata, block
    indices dropped ("encoder_block_3/attention/vmap()/div" -> "encoder_block/attention/div")."""
    sources = {}
    for name, op in re.findall(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text):
        op = re.sub(r"^jit\([^)]*\)/", "", op)
        op = re.sub(r"_\d+/", "/", op)
        sources[name] = re.sub(r"/vmap\([^)]*\)", "", op.split(";")[0])
    return sources


def breakdown(times, sources):
    """{"GEMM": [(source, ms)], "other": [(source, ms)]}, each largest first; a source
    is the model code an op comes from, with the op's kind in brackets."""
    groups = {"GEMM": collections.Counter(), "other": collections.Counter()}
    for name, t in times.items():
        group = "GEMM" if name.startswith(GEMM_PREFIXES) else "other"
        groups[group][f"{sources.get(name, '?')} [{re.sub(r'[.0-9]+$', '', name)}]"] += t
    return {group: counter.most_common() for group, counter in groups.items()}


@row("profile", "Image forward: where the time goes (jax.profiler, per XLA op)")
def row_profile(cfg, ctx):
    import keras

    if keras.backend.backend() != "jax":
        raise NotAvailable("the profile reads JAX's profiler")
    from keras_siglip2.convert.common import build_backbone

    spec = cfg["inference"]
    keras.utils.set_random_seed(0)
    tower = build_backbone(dict(spec["vision"], type="fixed"),
                           dict(spec["text"], vocabulary_size=1000)).vision_encoder
    size, batch = spec["vision"]["image_size"], spec["image_batch"]
    images = np.random.RandomState(0).uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    run, compiled = jax_compiled_forward(tower, {"images": images})
    run()
    progress(f"profile: {spec['arch']} forward, batch {batch}, under jax.profiler")
    groups = breakdown(op_times(run, cfg["profile_calls"]), hlo_sources(compiled.as_text()))
    gemm, other = (sum(ms for _, ms in groups[g]) for g in ("GEMM", "other"))
    total = gemm + other
    entries = [
        entry("forward op time: GEMM fusions", gemm, "ms per forward (thread time)",
              ratio=gemm / total, vs="all ops",
              note="YNNPACK/Eigen dot fusions, which also hold the elementwise ops XLA "
                   "fused into them (bias, GELU's tanh, softmax's exp)"),
        entry("forward op time: outside the GEMMs", other, "ms per forward (thread time)",
              ratio=other / total, vs="all ops"),
    ]
    for group, label in (("GEMM", "GEMM"), ("other", "non-GEMM")):
        for source, ms in groups[group][:5]:
            entries.append(entry(f"  {label}: {source}", ms, "ms per forward",
                                 ratio=ms / total, vs="all ops"))
    ctx["notes"].setdefault("profile", []).append(
        f"{spec['arch']}, batch {batch}, float32, random weights; {cfg['profile_calls']} "
        "forwards under jax.profiler, each XLA op's time summed over the threads (so it "
        "exceeds wall time on a loaded machine); sources from the optimized HLO's op_name "
        "metadata, block indices merged.")
    return entries
