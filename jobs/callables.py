"""Callables shipped with the platform, allowed by default in settings.JOB_CALLABLES.

A callable job runs `function(**parameters)` in a process of its own on a node. Add
your own by listing their dotted names in the JOB_CALLABLES setting.
"""

import time


def echo_parameters(**parameters):
    """Return the parameters it was given: a smoke test for callable jobs."""
    return parameters


def sleep(seconds: float = 1.0):
    time.sleep(seconds)
    return {"slept": seconds}
