"""Fast XLA compilation for every in-process test under tests/training (JAX): the
tiny models' train steps take milliseconds, their compilation seconds
(`pretrainer_helpers.fast_compilation`: XLA's backend optimizations off, and one
persistent compilation cache per pytest worker for identical programs)."""

import pytest

from tests.training.pretrainer_helpers import fast_compilation


@pytest.fixture(scope="module", autouse=True)
def compilation(tmp_path_factory):
    restore = fast_compilation(tmp_path_factory.getbasetemp() / "jax_cache")
    yield
    restore()
