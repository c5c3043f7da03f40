"""Reliability and security suite: stress, re-entrancy, fork, faults, misuse, fuzzing.

Reusable drivers live in plain modules (``stress``, ``faults``, ``misuse``, ``hooks``) so that a
long run is one ``python -m tests.reliability.<module>`` away; the ``test_*`` modules run bounded
variants of the same drivers. Tests marked ``long`` run only with ``PYSLAB_LONG=1``.
"""
