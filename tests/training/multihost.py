"""Starts real multi-process JAX runs on this machine for the multi-host tests: N
`siglip2 train` (or Python) processes, each with its own simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count), joined by `jax.distributed`
through KERAS_DISTRIBUTION_* on a free localhost port, the way a TPU pod slice runs one
process per host. Every wait has a timeout, so a hang fails a test instead of blocking
it."""

import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIGLIP2 = [sys.executable, "-m", "keras_siglip2.cli"]


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(process_id, num_processes, port, devices, extra=None):
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               TF_CPP_MIN_LOG_LEVEL="3")
    if num_processes > 1:
        env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}",
                   KERAS_DISTRIBUTION_NUM_PROCESSES=str(num_processes),
                   KERAS_DISTRIBUTION_PROCESS_ID=str(process_id))
    env.update(extra or {})
    return env


def start(commands, devices, env=None, port=None, logs=None):
    """Starts one process per command (process i gets id i); returns the Popen list.
    Output goes to `logs/<i>.log` (a folder) or is kept in pipes."""
    port = port or free_port()
    procs = []
    for i, command in enumerate(commands):
        out = subprocess.PIPE
        if logs is not None:
            os.makedirs(logs, exist_ok=True)
            out = open(os.path.join(logs, f"{i}.log"), "w")
        procs.append(subprocess.Popen(
            command, cwd=REPO, env=process_env(i, len(commands), port, devices, env),
            stdout=out, stderr=subprocess.STDOUT, text=True))
    return procs


def wait(procs, timeout):
    """Waits for all processes, killing every one still alive after `timeout` s;
    returns [(returncode, output)] (None as the code of a killed one)."""
    deadline = time.time() + timeout
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(deadline - time.time(), 0.1))
            results.append((proc.returncode, out or ""))
        except subprocess.TimeoutExpired:
            kill_all(procs)
            out, _ = proc.communicate()
            results.append((None, out or ""))
    return results


def kill_all(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)


def train_command(preset, data, out, steps, batch_size, mesh, *options):
    return SIGLIP2 + ["train", "--preset", str(preset), "--data", str(data), "--steps",
                      str(steps), "--batch-size", str(batch_size), "--out", str(out),
                      "--mesh", mesh, "--learning-rate", "1e-3", "--json", *options]


def run(commands, devices, timeout, env=None, logs=None):
    """start + wait."""
    return wait(start(commands, devices, env=env, logs=logs), timeout)
