"""Argument checks shared by the whole package: one function per kind of value, each
raising a ValueError that names the argument, the value given and what was expected
(never a silent conversion of a bool, a float or a negative number)."""

import math
import numbers


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name, value, minimum=1, allow_none=False, hint=""):
    """`value` as a Python int >= `minimum` (None passes through when `allow_none`).
    `hint` is appended to the message (why the minimum, what to pass instead)."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < minimum:
        expected = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"`{name}` must be {expected}{hint}; got {name}={value!r}.")
    return int(value)


def check_positive_int(name, value, allow_none=False):
    """`value` as a Python int >= 1 (None passes through when `allow_none`)."""
    return check_int(name, value, 1, allow_none=allow_none)


def check_number(name, value, low=-math.inf, high=math.inf, low_open=False,
                 high_open=False):
    """`value` as a Python float in the interval from `low` to `high` (open at either
    end when asked); NaN is refused."""
    inside = _is_number(value) and not math.isnan(value) and (
        (low < value if low_open else low <= value)
        and (value < high if high_open else value <= high))
    if not inside:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"`{name}` must be a number in {left}{low:g}, {high:g}{right}; "
                         f"got {name}={value!r}.")
    return float(value)


def check_positive(name, value):
    """A number > 0 (temperatures, sizes, learning rates)."""
    if not _is_number(value) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0; got {name}={value!r}.")
    return value


def check_fraction(name, value, low_open=False):
    """A number in [0, 1] (momenta, ratios, probabilities); (0, 1] with `low_open`."""
    return check_number(name, value, 0.0, 1.0, low_open=low_open)
