"""Plain-Python references the formula tests share (floats, no torch): written once, imported by the tests."""

import math


def softmax(row, T):
    """softmax(row / T) of one list of logits, max-shifted."""
    m = max(v / T for v in row)
    e = [math.exp(v / T - m) for v in row]
    return [v / sum(e) for v in e]
