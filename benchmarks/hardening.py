"""Measurement 7: what each hardening option costs, against the same configuration without it.

Hardening policies are found at run time: the policy named ``debug`` and any whose description
mentions hardening. Each is measured with every boolean option of its constructor off, with
each option alone, and with its defaults, on top of the default configuration and of
``dict-lookup``, on the alloc+free pair and on the random-order batch, interleaved with the
same base configuration without it.
"""

from __future__ import annotations

import random

import pyslab

from .context import Context
from .heaps import Configuration, Heap, bool_options, hardening_policies
from .loops import batch_contender, pair_contender, resident_blocks
from .results import Column, Section, Table
from .timing import compare

__all__ = ["BATCH", "SIZE", "measure", "measure_policies"]

SIZE = 64
BATCH = 10_000


def _variants(cls: type[pyslab.Policy]) -> list[tuple[str, dict[str, object]]]:
    """(label, constructor arguments) of each variant of a hardening policy.

    With no boolean option: the policy with its defaults. With options: every option off (what
    the policy costs by being there), each option alone, and the defaults, so each option's
    own cost is its row against the every-option-off row, and every row is against the base.
    """
    name = cls.name
    options = bool_options(cls)
    if not options:
        return [(name, {})]
    off: dict[str, object] = dict.fromkeys(options, False)
    variants: list[tuple[str, dict[str, object]]] = [(f"{name}(every option off)", off)]
    for option in options:
        variants.append((f"{name}(only {option})", {**off, option: True}))
    on = [o for o, default in options.items() if default]
    variants.append((f"{name}(defaults: {', '.join(on) or 'none'})", {}))
    return variants


def _heap(base: Configuration, label: str, extra: pyslab.Policy | None) -> Heap:
    spec: list[str | pyslab.Policy] = [base.spec] if base.spec else []
    if extra is not None:
        spec.append(extra)
    allocator = pyslab.SlabAllocator(policy=spec)
    return Heap(label, allocator.alloc, allocator.free, allocator.close, allocator)


def _bases(context: Context) -> list[Configuration]:
    discovery = context.discovery
    lookup = [c for c in discovery.configurations if c.names[1:] == ("dict-lookup",)]
    return [discovery.default(), *lookup]


def measure(context: Context) -> Section:
    """Find the registered hardening policies and measure each (see :func:`measure_policies`)."""
    names = hardening_policies(context.discovery.policies)
    classes: list[type[pyslab.Policy]] = []
    problems: list[str] = []
    for name in names:
        try:
            classes.append(type(pyslab.make_policy(name)))
        except pyslab.PyslabError as error:
            problems.append(f"{name}: not built with its defaults: {error}")
    section = measure_policies(context, classes)
    section.notes.extend(problems)
    return section


def measure_policies(context: Context, classes: list[type[pyslab.Policy]]) -> Section:
    """Time each base, and base + each policy variant, interleaved, per base configuration."""
    section = Section("hardening", 7, "cost of each hardening option")
    if not classes:
        section.notes.append(
            "skipped: no hardening policy is registered yet (a policy named `debug`, or one "
            "whose description mentions hardening)."
        )
        return section
    table = Table(f"{SIZE}-byte blocks: time with the option / time without", [
        Column("base", "base configuration"),
        Column("contender", "with"),
        Column("pair_ns", "pair", "ns"),
        Column("pair_ratio", "pair / base", "ratio"),
        Column("batch_ns", "batch, per block", "ns"),
        Column("batch_ratio", "batch / base", "ratio"),
        Column("cpu_share", "CPU share", "percent"),
    ])
    count = min(BATCH, context.profile.batch_blocks)
    order = list(range(count))
    random.Random(context.profile.seed).shuffle(order)
    for base in _bases(context):
        heaps = [_heap(base, "(none)", None)]
        try:
            for cls in classes:
                for label, params in _variants(cls):
                    try:
                        policy = cls(**params)
                    except (pyslab.PyslabError, TypeError, ValueError) as error:
                        section.notes.append(f"{label}: not built: {error}")
                        continue
                    heaps.append(_heap(base, label, policy))
            with resident_blocks(heaps, SIZE):
                pairs = compare([pair_contender(h, SIZE) for h in heaps], context.settings())
            batches = compare(
                [batch_contender(h, SIZE, order) for h in heaps],
                context.settings(context.profile.batch_rounds),
            )
            for heap in heaps:
                if heap.allocator is not None:
                    heap.allocator.validate()
        finally:
            for heap in heaps:
                heap.close()
        for heap in heaps:
            table.rows.append({
                "base": base.label, "contender": heap.name,
                "pair_ns": pairs[heap.name].median_ns,
                "pair_ratio": pairs[heap.name].ratio_to(pairs["(none)"]),
                "batch_ns": batches[heap.name].median_ns,
                "batch_ratio": batches[heap.name].ratio_to(batches["(none)"]),
                "cpu_share": min(pairs[heap.name].cpu_share, batches[heap.name].cpu_share),
                "clock": pairs[heap.name].clock,
                "pair": pairs[heap.name].to_dict(), "batch": batches[heap.name].to_dict(),
            })
    section.tables.append(table)
    section.notes.append(
        f"Hardening policies: {', '.join(c.name for c in classes)}; the batch is {count:,} blocks "
        "allocated then freed in random order."
    )
    return section
