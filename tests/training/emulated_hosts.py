"""Subprocess side of tests/training/test_multihost.py: `siglip2 train` in ONE process
whose data pipeline delivers, at each step, the global batch a run of `NUM_HOSTS`
processes delivers (host 0's per-host batch, then host 1's, ... as
`jax.make_array_from_process_local_data` assembles them), so that a one-process run on
8 devices and a 2-process run on 2 x 4 devices train on the same global batches and
must end with the same weights.

Usage: python -m tests.training.emulated_hosts NUM_HOSTS siglip2-train-arguments...
"""

import sys


def emulate_hosts(num_hosts):
    """Patches `image_text_dataset` so that a one-host call returns the concatenation of
    the `num_hosts` hosts' datasets (each with batch_size / num_hosts)."""
    import tensorflow as tf

    from keras_siglip2.training.data import pipeline

    original = pipeline.image_text_dataset

    def image_text_dataset(*args, batch_size, **kwargs):
        kwargs.pop("num_hosts", None)
        kwargs.pop("host_index", None)
        per_host = batch_size // num_hosts
        parts = [original(*args, batch_size=per_host, num_hosts=num_hosts, host_index=i,
                          **kwargs) for i in range(num_hosts)]
        return tf.data.Dataset.zip(tuple(parts)).map(
            lambda *batches: tf.nest.map_structure(lambda *xs: tf.concat(xs, 0), *batches))

    pipeline.image_text_dataset = image_text_dataset


def main(argv):
    emulate_hosts(int(argv[0]))
    from keras_siglip2 import cli

    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
