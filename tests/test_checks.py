"""keras_siglip2.checks: what each check accepts (and returns) and what it refuses, with
the argument, the value and the expectation in the message."""

import math

import numpy as np
import pytest

from keras_siglip2 import checks


def test_integers():
    assert checks.check_positive_int("k", np.int64(3)) == 3
    assert type(checks.check_positive_int("k", np.int64(3))) is int
    assert checks.check_int("seed", 0, minimum=0) == 0
    assert checks.check_positive_int("k", None, allow_none=True) is None
    for bad in (0, -2, 1.0, True, "3", None):
        with pytest.raises(ValueError, match=rf"`k` must be an integer >= 1; got k={bad!r}\."):
            checks.check_positive_int("k", bad)
    with pytest.raises(ValueError, match=r"`steps` must be an integer >= 4 \(one per stage\); "
                                         r"got steps=3\."):
        checks.check_int("steps", 3, minimum=4, hint=" (one per stage)")
    with pytest.raises(ValueError, match="an integer >= 1 or None; got n=0"):
        checks.check_positive_int("n", 0, allow_none=True)


def test_numbers_and_fractions():
    assert checks.check_fraction("p", 0) == 0.0 and checks.check_fraction("p", 1) == 1.0
    assert checks.check_positive("t", 0.5) == 0.5
    for bad in (-0.1, 1.5, math.nan, True, "0.5"):
        with pytest.raises(ValueError, match=r"`p` must be a number in \[0, 1\]; got p="):
            checks.check_fraction("p", bad)
    with pytest.raises(ValueError, match=r"`r` must be a number in \(0, 1\]; got r=0"):
        checks.check_fraction("r", 0, low_open=True)
    with pytest.raises(ValueError, match=r"`x` must be a number in \[-1, 1\); got x=1"):
        checks.check_number("x", 1, -1, 1, high_open=True)
    for bad in (0, -1, False):
        with pytest.raises(ValueError, match=r"`t` must be a number > 0"):
            checks.check_positive("t", bad)
