"""Shared test fixtures: the reference numbers in tests/fixtures (big_vision outputs and
real photos through the official preprocessing), tiny random models, and a helper to run
code under another Keras backend in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "big_vision"
REAL_PHOTOS = ROOT / "tests" / "fixtures" / "real_images" / "real_photos_pp.npz"


def fixture_path(name):
    path = FIXTURES / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(
            f"Reference fixture {path} is missing: it is part of the repository "
            "(tests/fixtures, see its README)."
        )
    return path


def load_real_photos():
    """The real-photo reference set (tests/fixtures/README.md): a dict of arrays."""
    with np.load(REAL_PHOTOS) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture
def load_fixture():
    def load(name):
        with np.load(fixture_path(name)) as npz:
            return {key: npz[key] for key in npz.files}

    return load


def run_in_backend(backend, code, timeout=600):
    """Runs `code` in a fresh Python with KERAS_BACKEND=backend; the code prints one
    JSON object as its last stdout line, which is returned."""
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{backend} subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny_backbone(image_size=32, patch_size=8, vision_width=64, text_width=64, seed=0, dtype=None):
    """A small random SigLIP2Backbone (2 layers per tower)."""
    import keras

    from keras_siglip2.convert.common import build_backbone

    keras.utils.set_random_seed(seed)
    backbone = build_backbone(
        {
            "type": "fixed",
            "patch_size": patch_size,
            "hidden_dim": vision_width,
            "num_layers": 2,
            "num_heads": 4,
            "intermediate_dim": 2 * vision_width,
            "image_size": image_size,
        },
        {
            "vocabulary_size": 1000,
            "hidden_dim": text_width,
            "num_layers": 2,
            "num_heads": 4,
            "intermediate_dim": 2 * text_width,
            "projection_dim": vision_width,
            "max_sequence_length": 16,
        },
        dtype=dtype,
    )
    # The text head starts at zero (as big_vision): give it values so that outputs
    # depend on every weight.
    rng = np.random.RandomState(seed)
    for v in backbone.text_encoder.head.weights:
        v.assign(rng.normal(0, 0.05, v.shape).astype("float32"))
    return backbone


def tiny_inputs(batch=3, image_size=32, seq=16, seed=0):
    rng = np.random.RandomState(seed)
    return {
        "images": rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype("float32"),
        "token_ids": rng.randint(0, 1000, (batch + 1, seq)).astype("int32"),
    }


# The tiny configuration of the demo's smoke run (tests/training/test_demo.py) and of
# the task checks on the model it trains (tests/tasks/test_demo_model.py).
TINY_DEMO = dict(width=16, num_layers=1, num_heads=2, image_size=16, target_image_size=24,
                 patch_size=8, num_examples=64, num_heldout=48, batch_size=8,
                 steps_per_epoch=2)


@pytest.fixture(scope="session")
def tiny_demo_run(tmp_path_factory):
    """(out_dir, summary) of one 8-step `run_demo` with `TINY_DEMO`, shared by the tests
    that read it: run once per `pytest` invocation, the xdist workers taking turns on
    a file lock in their common temporary folder (the second reads the first's run).
    To save a compilation SILC / TIPS and the resolution switch start together at
    step 7."""
    import pickle

    from filelock import FileLock

    from keras_siglip2.training.demo import run_demo
    from tests.training.pretrainer_helpers import fast_compilation

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder all workers' temporary folders are in
    out, done = root / "tiny_demo" / "demo", root / "tiny_demo" / "summary.pickle"
    with FileLock(str(root / "tiny_demo.lock")):
        if done.exists():
            return out, pickle.loads(done.read_bytes())
        restore = fast_compilation(root / "tiny_demo_jax_cache")
        try:
            summary = run_demo(out, steps=8, verbose=False, self_distillation_start=0.9,
                               resolution_start=0.9, **TINY_DEMO)
        finally:
            restore()
        done.write_bytes(pickle.dumps(summary))
    return out, summary
