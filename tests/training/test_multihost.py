"""Training on more than one host, with real processes: `siglip2 train` run as 2 JAX
processes x 4 simulated CPU devices joined by `jax.distributed` on localhost (gloo
collectives), as a TPU pod slice runs one process per host; the checkpoints' atomicity
under SIGKILL; the errors of mismatched commands and of an unreachable coordinator.

References are independent of the code under test: the 2-process weights are compared
with a 1-process run on 8 devices fed the same global batches (`emulated_hosts.py`
concatenates the hosts' per-host batches in one process), a resumed run with an
uninterrupted one, and the hosts' data with the records written to the CSV.

Every subprocess wait has a timeout (a hang fails the test). XLA compiles without its
backend optimizations here (JAX_DISABLE_MOST_OPTIMIZATIONS: the same computation,
compiled faster) and with a persistent compilation cache shared by a test's runs.
Measured on 2 shared CPU cores: a 2-process run of 4 sigmoid-only steps ~80 s, of the
full recipe (sigmoid, LocCa, SILC, TIPS) ~135 s; the 1-process 8-device reference 23 s
/ 49 s; max |weight difference| 2.9e-7 (batch=8) and 2.7e-7 to 4.1e-7 (batch=4,model=2).
"""

import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tests.tasks.conftest import make_tiny_preset, tiny_spm_proto
from tests.training import multihost as M

TOLERANCE = 1e-5  # float32: the reductions run in another order over 2 processes
SIGMOID_ONLY = ("--no-decoder", "--no-self-distillation", "--no-masked-prediction")
RUN_TIMEOUT = 420
# Runs that must fail at start-up: the --data case took 155 s once in a loaded full run
# (6 s alone), most likely a process waiting out the heartbeat timeout (100 s by
# default) for a peer that had already exited (not confirmed). 20 s bounds that wait;
# the error is printed before it.
FAIL_FAST = {"SIGLIP2_DISTRIBUTED_HEARTBEAT_TIMEOUT": "20"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(preset dir, csv path, compilation cache dir): a tiny fixed-resolution preset and
    12 rows whose images are constant gray levels 10, 30, ..., 230 (an image's
    identity is its mean)."""
    from keras_siglip2.training.data.sources import write_csv

    root = tmp_path_factory.mktemp("multihost")
    preset = make_tiny_preset(root / "preset", tiny_spm_proto())
    rows = [(np.full((20, 24, 3), 10 + 20 * i, np.uint8), f"a photo of a cat {i}")
            for i in range(12)]
    csv_path = write_csv(str(root / "data" / "captions.csv"), rows)
    return preset, csv_path, str(root / "jax_cache")


def _env(setup, **extra):
    env = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "true",
           "JAX_COMPILATION_CACHE_DIR": setup[2],
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env.update(extra)
    return env


def _command(setup, out, mesh, *options, steps=4, batch_size=8):
    return M.train_command(setup[0], setup[1], out, steps, batch_size, mesh, *options)


def _weights(preset_dir):
    out = {}
    with h5py.File(os.path.join(preset_dir, "model.weights.h5")) as f:
        f.visititems(lambda k, v: out.__setitem__(k, np.array(v))
                     if isinstance(v, h5py.Dataset) else None)
    return out


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _one_process(setup, out, mesh, *options, steps=4):
    """The 1-process, 8-device reference fed the 2 hosts' global batches."""
    command = [sys.executable, "-m", "tests.training.emulated_hosts", "2"]
    command += _command(setup, out, mesh, *options, steps=steps)[3:]
    [(code, output)] = M.run([command], 8, RUN_TIMEOUT, env=_env(setup))
    assert code == 0, output[-3000:]


def _two_processes(setup, out, mesh, *options, steps=4, env=None):
    command = _command(setup, out, mesh, *options, steps=steps)
    results = M.run([command, command], 4, RUN_TIMEOUT, env=_env(setup, **(env or {})))
    for i, (code, output) in enumerate(results):
        assert code == 0, (i, output[-3000:])
    return results


def _check_two_process_run(setup, tmp_path, mesh, options, terms):
    out = tmp_path / "two"
    options = (*options, "--checkpoint-every", "2")  # an orbax save over 2 processes
    results = _two_processes(setup, out, mesh, *options)
    summary = json.loads((out / "train_summary.json").read_text())
    print(f"{mesh}: checkpoint save (2 processes) {summary['timings_s']['checkpoint_save_s']} s")
    assert len(summary["timings_s"]["checkpoint_save_s"]) == 1  # at step 2, not at 4
    assert summary["num_hosts"] == 2 and summary["steps"] == 4 and summary["mesh"] == mesh
    assert summary["losses"] == list(terms)
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    # Process 0 wrote the preset and the summary; both printed the summary; the
    # checkpoints of the finished run are gone.
    for _, output in results:
        assert json.loads(output.strip().splitlines()[-1])["steps"] == 4
    assert not (out / "backup").exists()
    _one_process(setup, tmp_path / "one", mesh, *options)
    two = _weights(out / "preset")
    one = _weights(tmp_path / "one" / "preset")
    start = _weights(setup[0])
    assert _max_diff(two, start) > 1e-3  # it trained
    diff = _max_diff(two, one)
    print(f"{mesh}: max |2-process - 1-process| weight difference {diff:.2e}")
    assert diff <= TOLERANCE, diff


def test_two_processes_data_parallel_match_one_process(setup, tmp_path):
    """`--mesh batch=8` over 2 processes x 4 devices: both exit 0, the preset written
    once; its weights equal the 1-process 8-device run's on the same global batches."""
    _check_two_process_run(setup, tmp_path, "batch=8", SIGMOID_ONLY, ("sigmoid",))


@pytest.mark.large
def test_two_processes_model_parallel_full_recipe_match_one_process(setup, tmp_path):
    """`--mesh batch=4,model=2` with sigmoid, LocCa, SILC and TIPS (switched on at 80 %
    of 4 steps: the EMA teacher trains under the 2-process mesh)."""
    _check_two_process_run(setup, tmp_path, "batch=4,model=2", (),
                           ("sigmoid", "locca", "silc", "tips"))


@pytest.mark.large
def test_two_processes_full_recipe_with_acid_curation(setup, tmp_path):
    """The whole recipe with ACID on (`--curate-with` the starting preset as the
    reference, keeping half of each host's super-batch) over 2 processes x 4 devices
    with `--mesh batch=4,model=2`: both exit 0 and the summary reports the kept
    fraction (exactly the keep ratio) and a finite learnability."""
    out = tmp_path / "acid"
    _two_processes(setup, out, "batch=4,model=2", "--curate-with", str(setup[0]),
                   "--curation-ratio", "0.5")
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_hosts"] == 2 and summary["steps"] == 4
    assert set(summary["losses"]) == {"sigmoid", "locca", "silc", "tips"}
    curation = summary["curation"]
    assert curation["keep_ratio"] == 0.5
    assert curation["kept_fraction"] == pytest.approx(0.5)
    assert np.isfinite(curation["learnability"]["final"])
    assert (out / "preset" / "model.weights.h5").exists()


@pytest.mark.large
def test_two_processes_naflex_stage_match_one_process(setup, tmp_path):
    """`--naflex-from 0.5 --naflex-lengths 8,16` on 2 processes x 4 devices: from step
    2 each host reads NaFlex views (both hosts draw the same length for a batch, or
    the global batch could not be assembled); the NaFlex preset written equals the
    1-process 8-device run's on the same global batches."""
    options = (*SIGMOID_ONLY, "--naflex-from", "0.5", "--naflex-lengths", "8,16",
               "--checkpoint-every", "2")
    out = tmp_path / "two"
    _two_processes(setup, out, "batch=8", *options)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_hosts"] == 2 and summary["steps"] == 4
    assert summary["naflex_stage"]["switch_step"] == 2
    config = json.loads((out / "preset" / "config.json").read_text())
    assert "NaFlex" in json.dumps(config["config"]["vision_encoder"])
    _one_process(setup, tmp_path / "one", "batch=8", *options)
    two, one = _weights(out / "preset"), _weights(tmp_path / "one" / "preset")
    diff = _max_diff(two, one)
    print(f"NaFlex stage: max |2-process - 1-process| weight difference {diff:.2e}")
    assert diff <= TOLERANCE, diff


def test_hosts_read_disjoint_parts_of_the_records(setup):
    """Over one epoch, the 2 hosts' pipelines (per-host batch 2) deliver every record
    of the CSV exactly once between them."""
    from keras_siglip2.preprocessing import SigLIP2Preprocessor
    from keras_siglip2.training.data.pipeline import image_text_dataset

    preprocessor = SigLIP2Preprocessor.from_preset(setup[0])
    seen = []
    for host in range(2):
        dataset = image_text_dataset(setup[1], preprocessor, batch_size=2, num_hosts=2,
                                     host_index=host, seed=0, num_epochs=1)
        levels = []
        for batch in dataset:
            images = np.asarray(batch["images"])
            # [-1, 1] from [0, 255]: the gray level of each image.
            levels += [int(round((m + 1) * 127.5)) for m in images.mean(axis=(1, 2, 3))]
        assert len(levels) == 6, (host, levels)
        seen.append(levels)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [10 + 20 * i for i in range(12)]


def test_mismatched_commands_fail_at_start_up(setup, tmp_path):
    """Process 1 started with another --batch-size: both fail within the timeout, naming
    the argument, instead of deadlocking in the first collective."""
    commands = [_command(setup, tmp_path / "run", "batch=8", *SIGMOID_ONLY),
                _command(setup, tmp_path / "run", "batch=8", *SIGMOID_ONLY, batch_size=16)]
    t0 = time.time()
    results = M.run(commands, 4, 180, env=_env(setup, **FAIL_FAST))
    for code, output in results:
        assert code not in (0, None), output[-2000:]
        assert "started with different arguments: batch_size differ" in output, output[-2000:]
    assert time.time() - t0 < 180
    assert not (tmp_path / "run" / "preset").exists()


@pytest.mark.parametrize("differ", ["mesh", "data"])
def test_mismatched_mesh_or_data_fail_at_start_up(setup, tmp_path, differ):
    """Process 1 started with another --mesh (batch=4,model=2 instead of batch=8), or
    with --data naming a CSV of other records (the same file name in another folder):
    both fail within the timeout with an error naming the argument, not a hang."""
    first = _command(setup, tmp_path / "run", "batch=8", *SIGMOID_ONLY)
    if differ == "mesh":
        second = _command(setup, tmp_path / "run", "batch=4,model=2", *SIGMOID_ONLY)
    else:
        from keras_siglip2.training.data.sources import write_csv

        rows = [(np.full((20, 24, 3), 5 + 20 * i, np.uint8), f"a photo of a dog {i}")
                for i in range(13)]
        other = write_csv(str(tmp_path / "other" / "captions.csv"), rows)
        second = M.train_command(setup[0], other, tmp_path / "run", 4, 8, "batch=8",
                                 *SIGMOID_ONLY)
    t0 = time.time()
    results = M.run([first, second], 4, 180, env=_env(setup, **FAIL_FAST))
    for code, output in results:
        assert code not in (0, None), output[-2000:]
        assert f"started with different arguments: {differ} differ" in output, output[-2000:]
    assert time.time() - t0 < 180
    assert not (tmp_path / "run" / "preset").exists()


def test_unreachable_coordinator_fails_within_the_timeout(setup, tmp_path):
    """Process 1 of 2 whose coordinator never starts: fails after the 5 s
    SIGLIP2_DISTRIBUTED_INIT_TIMEOUT, naming the address."""
    port = M.free_port()
    command = _command(setup, tmp_path / "run", "batch=8", *SIGMOID_ONLY)
    env = M.process_env(1, 2, port, 4, {"SIGLIP2_DISTRIBUTED_INIT_TIMEOUT": "5"})
    t0 = time.time()
    proc = subprocess.run(command, cwd=M.REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    elapsed = time.time() - t0
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert f"the coordinator 'localhost:{port}'" in output, output[-2000:]
    assert "did not answer within 5 s" in output, output[-2000:]
    assert elapsed < 60, elapsed


def _checkpoint_dirs(backup):
    """(complete steps, unfinished write folders) in an orbax checkpoint folder."""
    names = os.listdir(backup) if os.path.isdir(backup) else []
    steps = sorted(int(n) for n in names if n.isdigit()
                   and os.path.isfile(os.path.join(backup, n, "commit_success.txt")))
    return steps, [n for n in names if "tmp" in n]


def _kill_when(proc, condition, timeout=RUN_TIMEOUT):
    """SIGKILLs `proc` as soon as `condition()` holds (polled every 2 ms); returns
    whether it did (False: the process ended first)."""
    deadline = time.time() + timeout
    while proc.poll() is None:
        if condition():
            proc.kill()
            proc.wait(timeout=60)
            return True
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("the run neither reached the kill point nor ended")
        time.sleep(0.002)
    return False


MID_WRITE, AFTER_COMMIT = "mid-write", "after a commit"


# Both cases run with -m large (the short one took 51-64 s of the default run); the
# default run keeps the 2-process orbax save (test_two_processes_data_parallel_...)
# and tests/training/test_callbacks.py's in-process resume.
@pytest.mark.large
@pytest.mark.parametrize("moments", [
    (AFTER_COMMIT, MID_WRITE),
    (MID_WRITE, AFTER_COMMIT, MID_WRITE, AFTER_COMMIT, MID_WRITE),
])
def test_sigkill_at_any_moment_never_blocks_resumption(setup, tmp_path, moments):
    """A real single-host `siglip2 train` (6 steps, a checkpoint after every step),
    SIGKILLed at each of `moments` (while a checkpoint is being written, right after
    one is complete), restarted with the same command each time: every restart resumes
    from the last complete checkpoint (the unfinished one is ignored and removed) and
    the final weights equal an uninterrupted run's."""
    options = (*SIGMOID_ONLY, "--checkpoint-every", "1")
    command = M.train_command(setup[0], setup[1], tmp_path / "killed", 6, 4, "batch=1",
                              *options)
    straight = M.train_command(setup[0], setup[1], tmp_path / "straight", 6, 4, "batch=1",
                               *options)
    [(code, output)] = M.run([straight], 1, RUN_TIMEOUT, env=_env(setup))
    assert code == 0, output[-3000:]
    backup = str(tmp_path / "killed" / "backup")
    mid_write = lambda: bool(_checkpoint_dirs(backup)[1])  # noqa: E731
    seen = []
    for name in moments:
        before = _checkpoint_dirs(backup)[0]
        condition = mid_write
        if name == AFTER_COMMIT:
            condition = lambda before=before: (  # noqa: E731
                (_checkpoint_dirs(backup)[0] or [0])[-1] > (before or [0])[-1])
        [proc] = M.start([command], 1, env=_env(setup))
        assert _kill_when(proc, condition), f"the run ended before the {name} kill"
        steps, unfinished = _checkpoint_dirs(backup)
        seen.append((name, steps, unfinished))
    # At least one kill landed while orbax was writing (an unfinished folder was left).
    assert any(unfinished for _, _, unfinished in seen), seen
    last = seen[-1][1][-1] if seen[-1][1] else 0
    [(code, output)] = M.run([command], 1, RUN_TIMEOUT, env=_env(setup))
    assert code == 0, output[-3000:]
    summary = json.loads((tmp_path / "killed" / "train_summary.json").read_text())
    assert summary["start_step"] == last and summary["steps"] == 6, (summary, seen)
    print(f"kills {seen}; restore {summary['timings_s']['checkpoint_restore_s']} s, "
          f"saves {summary['timings_s']['checkpoint_save_s']} s")
    assert last > 0, seen
    assert not os.path.exists(backup)
    diff = _max_diff(_weights(tmp_path / "killed" / "preset"),
                     _weights(tmp_path / "straight" / "preset"))
    assert diff <= 1e-6, (diff, seen)


@pytest.mark.large
def test_killed_peer_fails_the_other_and_both_resume(setup, tmp_path):
    """2 processes, `--mesh batch=8`, 6 steps, checkpoints every 2; process 1 is
    SIGKILLed once the step-2 checkpoint is complete: process 0 ends with an error
    within the heartbeat timeout (10 s here) plus a margin instead of hanging. The same
    command started again on both resumes from the last complete checkpoint and ends
    with the weights of an uninterrupted 2-process run."""
    options = (*SIGMOID_ONLY, "--checkpoint-every", "2")
    env = _env(setup, SIGLIP2_DISTRIBUTED_HEARTBEAT_TIMEOUT="10")
    out = tmp_path / "killed"
    command = _command(setup, out, "batch=8", *options, steps=6)
    backup = str(out / "backup")
    procs = M.start([command, command], 4, env=env, logs=str(tmp_path / "logs"))
    try:
        assert _kill_when(procs[1], lambda: bool(_checkpoint_dirs(backup)[0])), \
            "the run ended before the kill"
        t0 = time.time()
        code = procs[0].wait(timeout=120)
        waited = time.time() - t0
    finally:
        M.kill_all(procs)
    assert code != 0
    print(f"process 0 ended {waited:.1f} s after its peer was killed (code {code})")
    assert waited < 90, waited
    steps = _checkpoint_dirs(backup)[0]
    assert steps, os.listdir(backup)
    _two_processes(setup, out, "batch=8", *options, steps=6, env=env)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["start_step"] == steps[-1] and summary["steps"] == 6
    print(f"resumed at {steps[-1]}; restore {summary['timings_s']['checkpoint_restore_s']} s")
    _two_processes(setup, tmp_path / "straight", "batch=8", *options, steps=6, env=env)
    diff = _max_diff(_weights(out / "preset"), _weights(tmp_path / "straight" / "preset"))
    print(f"resumed vs uninterrupted 2-process run: {diff:.2e}")
    assert diff <= TOLERANCE, diff
