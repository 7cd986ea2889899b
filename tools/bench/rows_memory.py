"""Row 5: compiled memory of the sigmoid loss (plain, chunked, ring over devices) and of the LocCa decoder loss (logits against vocabulary chunks)."""

import json
import os
import subprocess
import sys

import numpy as np

from tools.bench.common import ROOT, NotAvailable, entry, require, row, unavailable




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
    args = {"batches": spec["batches"], "dim": spec["dim"]}
    return run_simulated_devices_child("distributed_loss_memory", args)


def run_simulated_devices_child(name, args):
    """Runs the child `name` of CHILDREN (`tools/benchmark.py --child`) in a subprocess
    with DISTRIBUTED_DEVICES simulated CPU devices (XLA_FLAGS=
    --xla_force_host_platform_device_count); returns the JSON it prints last, or the
    reason (str) the ring loss is not available."""
    try:
        require("keras_siglip2.training.losses.distributed", "ring_sigmoid_loss_fn")
    except NotAvailable as e:
        return str(e)
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                          f"device_count={DISTRIBUTED_DEVICES}").strip(),
               JAX_PLATFORMS="cpu")
    args = dict(args, devices=DISTRIBUTED_DEVICES)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "benchmark.py"), "--child", name,
         "--child-args", json.dumps(args)],
        env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ring_mesh_and_grad(n):
    """(mesh, sharded, replicated, jax.value_and_grad of the ring loss) over the first
    n devices."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from keras_siglip2.training.losses.distributed import ring_sigmoid_loss_fn

    if len(jax.devices()) < n:
        raise RuntimeError(f"expected {n} simulated devices, got {len(jax.devices())}")
    mesh = Mesh(np.array(jax.devices()[:n]), ("batch",))
    grad = jax.value_and_grad(ring_sigmoid_loss_fn(mesh, "batch"), argnums=(0, 1, 2, 3))
    return (mesh, NamedSharding(mesh, PartitionSpec("batch")),
            NamedSharding(mesh, PartitionSpec()), grad)


def child_distributed_loss_memory(args):
    """(In the subprocess.) Compiles the ring loss + gradients over a 1-D mesh."""
    import jax

    _, sharded, replicated, grad = _ring_mesh_and_grad(args["devices"])
    out = {}
    for batch in args["batches"]:
        emb = jax.ShapeDtypeStruct((batch, args["dim"]), np.float32, sharding=sharded)
        scalar = jax.ShapeDtypeStruct((), np.float32, sharding=replicated)
        out[str(batch)] = compiled_memory(grad, emb, emb, scalar, scalar)
    print(json.dumps({"devices": args["devices"], "batches": out}))


def child_distributed_loss_time(args):
    """(In the subprocess.) Times the ring loss + gradients (executed on the simulated
    devices, which share the host's cores) per global batch, in alternation."""
    import jax

    from tools.bench.common import alternate

    _, sharded, replicated, grad = _ring_mesh_and_grad(args["devices"])
    rng = np.random.RandomState(0)
    runs = {}
    for batch in args["batches"]:
        emb = [jax.device_put(rng.normal(size=(batch, args["dim"])).astype(np.float32),
                              sharded) for _ in range(2)]
        scalars = [jax.device_put(np.float32(v), replicated) for v in (2.3, -10.0)]
        compiled = jax.jit(grad).lower(*emb, *scalars).compile()
        runs[str(batch)] = (lambda c=compiled, a=(*emb, *scalars):
                            jax.block_until_ready(c(*a)))
    timing = alternate(runs, args["repeats"], args["min_seconds"],
                       settle=args.get("settle", True))
    print(json.dumps({"devices": args["devices"], "median_s": timing["median_s"]}))


CHILDREN = {"distributed_loss_memory": child_distributed_loss_memory,
            "distributed_loss_time": child_distributed_loss_time}
