"""Subprocess side of tests/training/test_distributed_pretrainer.py: `SigLIP2Pretrainer`
training steps on 8 simulated CPU devices (the XLA host device count is fixed when JAX
starts, so the test runs `main()` in a fresh Python with
XLA_FLAGS=--xla_force_host_platform_device_count=8 set first). Prints one JSON object.

`layouts`: a pretrainer with every loss on (sigmoid, LocCa, SILC, TIPS; the teacher
initialized) on one device, and the same pretrainer built under `DataParallel` over 8
devices and `ModelParallel` meshes 2x4 and 1x8: the sharding spec of every variable and
optimizer slot, the per-device bytes, the sigmoid term's form, value and gradients on
the batch's embeddings split over the batch axis; for the layouts in `fit_meshes`, one
`fit` step (the step's random choices given in the batch) compared with the one-device
step: every loss term, student / teacher / other variable and optimizer variable. Then
the errors of a batch or model the mesh does not divide.

`train_command`: `siglip2 train --mesh batch=4,model=2` (the CLI entry point) on a tiny
preset for 2 steps, reporting the sharding of the pretrainer it built.
"""

import json
import warnings

import numpy as np

BATCH = 8
IMAGE_SIZE = 32
PATCH_SIZE = 8
WIDTH = 64
TEXT_VOCAB = 1000
SEQ = 16
NUM_BINS = 24  # LocCa vocabulary 1000 + 24 = 1024, divisible by 8
VIEWS = 2
HEAD_DIMS = (128, 64, 128)
LAYOUTS = (("data", "batch=8"), ("2x4", "batch=2,model=4"), ("1x8", "batch=1,model=8"))


def tower_configs(num_heads=8):
    vision = dict(type="fixed", patch_size=PATCH_SIZE, hidden_dim=WIDTH, num_layers=1,
                  num_heads=num_heads, intermediate_dim=2 * WIDTH, image_size=IMAGE_SIZE)
    text = dict(vocabulary_size=TEXT_VOCAB, hidden_dim=WIDTH, num_layers=1, num_heads=8,
                intermediate_dim=2 * WIDTH, projection_dim=WIDTH, max_sequence_length=SEQ)
    return vision, text


def make_pretrainer(num_heads=8, num_bins=NUM_BINS):
    import keras

    from keras_siglip2.convert.common import build_backbone
    from keras_siglip2.models.locca_decoder import locca_decoder_for
    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer

    keras.utils.set_random_seed(0)
    backbone = build_backbone(*tower_configs(num_heads))
    decoder = locca_decoder_for(backbone, num_location_bins=num_bins)
    return SigLIP2Pretrainer(backbone, decoder=decoder, head_dims=HEAD_DIMS,
                             teacher_momentum=0.9, seed=0)


def make_batch(batch=BATCH, seed=0):
    """Every field, including the step's random choices ("tips_mask", "locca_parallel"),
    so that the step draws nothing at random."""
    rng = np.random.RandomState(seed)
    grid = (IMAGE_SIZE // PATCH_SIZE) ** 2
    length = SEQ + 4
    vocab = TEXT_VOCAB + NUM_BINS
    weights = np.zeros((batch, length), "float32")
    weights[:, 2:12] = 1.0
    prefix = np.zeros((batch, length), "int32")
    prefix[::2, 1:3] = 1
    mask = np.zeros((batch, grid), "int32")
    for i in range(batch):
        mask[i, rng.permutation(grid)[: grid // 2]] = 1
    size = (batch, IMAGE_SIZE, IMAGE_SIZE, 3)
    return {
        "images": rng.uniform(-1, 1, size).astype("float32"),
        "token_ids": rng.randint(0, TEXT_VOCAB, (batch, SEQ)).astype("int32"),
        "local_images": rng.uniform(-1, 1, (batch, VIEWS) + size[1:]).astype("float32"),
        "decoder_token_ids": rng.randint(0, vocab, (batch, length)).astype("int32"),
        "decoder_targets": rng.randint(0, vocab, (batch, length)).astype("int32"),
        "decoder_weights": weights,
        "decoder_prefix_mask": prefix,
        "tips_mask": mask,
        "locca_parallel": (np.arange(batch) % 2).astype("int32"),
    }


def numpy_values(variables):
    import keras

    return [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in variables]


def max_diff(a, b):
    return max((float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b)
                if x.size), default=0.0)


def fit_one_step(pretrainer, batch):
    pretrainer.compile(total_steps=10)  # the paper's optimizer; lr 1e-3 at step 0
    history = pretrainer.fit(batch, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    logs = {k: float(v[-1]) for k, v in history.history.items()}
    return {
        "logs": logs,
        "trainable": numpy_values(pretrainer.trainable_variables),
        "non_trainable": numpy_values(pretrainer.non_trainable_variables),
        "optimizer": numpy_values(pretrainer.optimizer.variables),
    }


def embeddings(pretrainer, batch):
    """The normalized (zimg, ztxt) of a batch and the logit head's (t, b), as numpy."""
    import keras

    from keras_siglip2.layers import l2_normalize

    backbone = pretrainer.backbone
    zimg = l2_normalize(backbone.get_vision_embeddings(batch["images"]))
    ztxt = l2_normalize(backbone.get_text_embeddings(batch["token_ids"]))
    head = backbone.logit_head
    return [np.asarray(keras.ops.convert_to_numpy(x))
            for x in (zimg, ztxt, head.log_temperature, head.bias)]


def sigmoid_term_and_grads(pretrainer, inputs, distribution=None):
    """The pretrainer's sigmoid term (in the form it picks under the current
    distribution) and its gradients with respect to (zimg, ztxt, t, b), jitted, with
    the embeddings split over the batch axis as the train step's are; also how many
    collective permutes (the ring's block exchanges) the program has."""
    import jax

    if distribution is not None:
        inputs = [jax.device_put(x, distribution.get_data_layout(x.shape).backend_layout)
                  for x in inputs[:2]] + list(inputs[2:])
    step = jax.jit(jax.value_and_grad(pretrainer.sigmoid_loss_fn, argnums=(0, 1, 2, 3)))
    lowered = step.lower(*inputs)
    mode = pretrainer.sigmoid_loss_fn.last_mode
    permutes = lowered.as_text().count("collective_permute")
    loss, grads = lowered.compile()(*inputs)
    return {"mode": mode, "permutes": permutes, "loss": float(loss),
            "grads": [np.asarray(g) for g in grads]}


def relative_path(variable):
    """The variable path without the pretrainer's own auto-numbered name."""
    path = variable.path
    return path.split("/", 1)[1] if path.startswith("sig_lip2_pretrainer") else path


def sharding_specs(variables):
    specs = {}
    for v in variables:
        spec = tuple(getattr(v.value.sharding, "spec", ()))
        specs[relative_path(v)] = list(spec) + [None] * (len(v.shape) - len(spec))
    return specs


def error_of(call):
    try:
        call()
    except ValueError as e:
        return str(e)
    return None


def layouts(fit_meshes=tuple(name for name, _ in LAYOUTS)):
    """See the module docstring; one `fit` step is compared for the layouts named in
    `fit_meshes` (each costs one compilation of the whole train step)."""
    from keras_siglip2 import distribution as D
    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer

    batch = make_batch()
    reference = make_pretrainer()
    reference.start_self_distillation()  # the 80 % switch: teacher = student
    rng = np.random.RandomState(1)
    head = reference.backbone.text_encoder.head.kernel  # zero at init (big_vision)
    head.assign(rng.normal(0, 0.05, head.shape).astype("float32"))
    start = reference.get_weights()  # in `weights` order, for set_weights
    start_trainable = numpy_values(reference.trainable_variables)
    start_non_trainable = numpy_values(reference.non_trainable_variables)
    paths = [relative_path(v) for v in reference.trainable_variables]
    inputs = embeddings(reference, batch)
    ref_term = sigmoid_term_and_grads(reference, inputs)
    teacher_ids = {id(t) for t, _ in reference._teacher_pairs()}
    teacher_mask = [id(v) in teacher_ids for v in reference.non_trainable_variables]
    result = {"reference": {"sigmoid_mode": ref_term["mode"],
                            "permutes": ref_term["permutes"], "sigmoid_term": ref_term["loss"],
                            "sigmoid_grad_scale": max(float(np.abs(g).max())
                                                      for g in ref_term["grads"])}}
    if fit_meshes:
        ref = fit_one_step(reference, batch)
        ref_teacher = [v for v, t in zip(ref["non_trainable"], teacher_mask) if t]
        result["reference"]["logs"] = ref["logs"]

    for name, mesh in LAYOUTS:
        distribution = D.setup_distribution(mesh, batch_size=BATCH,
                                            backbone=reference.backbone, set_global=False)
        with distribution.scope():
            model = make_pretrainer()
            model.set_weights(start)
            assert [relative_path(v) for v in model.trainable_variables] == paths
            term = sigmoid_term_and_grads(model, inputs, distribution)
            if name in fit_meshes:
                step = fit_one_step(model, batch)
            else:  # the optimizer's slots, to see their layout
                model.compile(total_steps=10)
                model.optimizer.build(model.trainable_variables)
            out = {
                "type": type(distribution).__name__,
                "specs": sharding_specs(model.weights),
                "optimizer_specs": sharding_specs(model.optimizer.variables),
                "device_bytes": int(sum(v.value.addressable_shards[0].data.nbytes
                                        for v in model.weights)),
                "total_bytes": int(sum(v.value.nbytes for v in model.weights)),
                "sigmoid_mode": term["mode"],
                "permutes": term["permutes"],
                "sigmoid_term_diff": abs(term["loss"] - ref_term["loss"]),
                "sigmoid_grad_diff": max_diff(term["grads"], ref_term["grads"]),
            }
            if name in fit_meshes:
                out["fit_sigmoid_mode"] = model.sigmoid_loss_fn.last_mode
        if name in fit_meshes:
            teacher = [v for v, t in zip(step["non_trainable"], teacher_mask) if t]
            out.update({
                "log_diffs": {k: abs(step["logs"][k] - ref["logs"][k]) for k in ref["logs"]},
                "student_diff": max_diff(step["trainable"], ref["trainable"]),
                "teacher_diff": max_diff(teacher, ref_teacher),
                "non_trainable_diff": max_diff(step["non_trainable"], ref["non_trainable"]),
                "optimizer_diff": max_diff(step["optimizer"], ref["optimizer"]),
                "student_moved": max_diff(ref["trainable"], start_trainable),
                "teacher_moved": max_diff(ref_teacher, [
                    v for v, t in zip(start_non_trainable, teacher_mask) if t]),
            })
        result[name] = out

    # Bad input, before any work.
    errors = {}
    errors["setup_batch"] = error_of(lambda: D.setup_distribution(
        "batch=4,model=2", batch_size=6, backbone=reference, set_global=False))
    six_heads = make_pretrainer(num_heads=4)  # 4 heads on a model axis of 8
    errors["setup_heads"] = error_of(lambda: D.setup_distribution(
        "batch=1,model=8", batch_size=BATCH, backbone=six_heads, set_global=False))
    for name, mesh in (("fit_batch_data", "batch=8"), ("fit_batch_2x4", "batch=4,model=2")):
        # A distribution set up for batch 8, then a fit on 6 examples.
        distribution = D.setup_distribution(mesh, batch_size=BATCH, set_global=False)
        with distribution.scope():
            model = make_pretrainer()
            model.compile(total_steps=10)
            small = make_batch(batch=6)
            errors[name] = error_of(lambda: model.fit(small, batch_size=6, verbose=0))
            # Raised before the train step was even traced (it never called the loss).
            errors[name + "_traced"] = model.sigmoid_loss_fn.last_mode is not None
    distribution = D.setup_distribution("batch=1,model=8", set_global=False)
    with distribution.scope(), warnings.catch_warnings(record=True) as caught:
        # LocCa vocabulary 1000 + 20 = 1020 is not divisible by 8: replicated, warned.
        warnings.simplefilter("always")
        odd = make_pretrainer(num_bins=20)
        kernel = odd.decoder.logits_dense.kernel
        result["odd_vocabulary"] = {
            "warnings": [str(w.message) for w in caught if "replicated" in str(w.message)],
            "spec": list(getattr(kernel.value.sharding, "spec", ())),
            "shape": list(kernel.shape),
            "device_shape": list(kernel.value.addressable_shards[0].data.shape),
        }
    errors["bad_mode"] = error_of(lambda: SigLIP2Pretrainer(
        reference.backbone, decoder=None, self_distillation=False, masked_prediction=False,
        sigmoid_loss="ring"))
    result["errors"] = errors
    return result


def train_command(workdir):
    """`siglip2 train --mesh batch=4,model=2` (the CLI entry point) for 2 steps of batch
    8 on a tiny preset and 12 image-caption rows written to `workdir`; records the
    pretrainer the command built (its variables' shardings, the distribution active
    when `fit` started, its sigmoid-loss form)."""
    import keras

    from keras_siglip2 import cli
    from keras_siglip2.training.data.sources import write_csv
    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer
    from tests.tasks.conftest import make_tiny_preset, tiny_spm_proto

    preset = make_tiny_preset(f"{workdir}/preset", tiny_spm_proto())
    rng = np.random.RandomState(0)
    captions = ["a photo of a cat", "a photo of a dog", "a red square", "a blue circle"]
    examples = [(rng.randint(0, 256, (20, 24, 3)).astype(np.uint8), captions[i % 4])
                for i in range(12)]
    data = write_csv(f"{workdir}/data/captions.csv", examples)
    out = f"{workdir}/run"
    seen = {}
    original_fit = SigLIP2Pretrainer.fit

    def recording_fit(self, *args, **kwargs):
        seen["distribution"] = type(keras.distribution.distribution()).__name__
        seen["specs"] = sharding_specs(self.weights)
        history = original_fit(self, *args, **kwargs)
        seen["sigmoid_mode"] = self.sigmoid_loss_fn.last_mode
        seen["stage"] = float(keras.ops.convert_to_numpy(self.self_distillation_active))
        return history

    SigLIP2Pretrainer.fit = recording_fit
    code = cli.main(["train", "--preset", preset, "--data", data, "--steps", "2",
                     "--batch-size", "8", "--out", out, "--mesh", "batch=4,model=2",
                     "--learning-rate", "1e-4"])
    with open(f"{out}/train_summary.json") as f:
        summary = json.load(f)
    return {"exit_code": code, "summary": summary, **seen}


def main(cache_dir, workdir=None, parts=("layouts", "train_command"), fit_meshes=None):
    """Runs `layouts(fit_meshes)` and / or `train_command(workdir)` with the tests'
    fast XLA settings (compilation cache in `cache_dir`); prints one JSON line."""
    import jax

    if len(jax.devices()) != 8:
        raise RuntimeError(f"Expected 8 simulated devices, got {jax.devices()}.")
    from tests.training.pretrainer_helpers import fast_compilation

    fast_compilation(cache_dir)
    result = {}
    if "layouts" in parts:
        meshes = tuple(name for name, _ in LAYOUTS) if fit_meshes is None else fit_meshes
        result["layouts"] = layouts(tuple(meshes))
    if "train_command" in parts:
        result["train_command"] = train_command(workdir)
    print(json.dumps(result))
