"""The policy layer: the plugin interface, composition and the registry of policies.

What it holds: :class:`Policy` (the hooks a plugin overrides), the :class:`Heap` protocol (what a
bound policy sees of its allocator), :class:`BlockOperations` (what a front end wraps),
:func:`resolve` (a composition's hooks resolved once, checked when bound) and the registry
(:func:`policies`, :func:`make_policy`, :func:`parse_policies`), with the entry-point
machinery that the workload registry shares.

What it may import: the standard library and :mod:`pyslab.errors`; the core's types are named
for the type checker only (the core imports this layer to bind policies). Nothing above.
"""

from __future__ import annotations

from .compose import ResolvedPolicy, resolve
from .entry_points import EntryPointRegistry, PluginEntry
from .interface import BlockOperations, Heap, Policy
from .registry import (
    BASE_POLICY,
    DEFAULT_POLICY,
    PolicyPart,
    PolicySpec,
    make_policy,
    parse_policies,
    parse_spec,
    policies,
    policy_entries,
)

__all__ = [
    "BASE_POLICY",
    "DEFAULT_POLICY",
    "BlockOperations",
    "EntryPointRegistry",
    "Heap",
    "PluginEntry",
    "Policy",
    "PolicyPart",
    "PolicySpec",
    "ResolvedPolicy",
    "make_policy",
    "parse_policies",
    "parse_spec",
    "policies",
    "policy_entries",
    "resolve",
]
