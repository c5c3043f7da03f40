"""Policy specs: ``name(key=value)+...`` strings reach the policies' constructors from every
place that takes a spec, and every malformed spec is refused with a message naming what is
wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

import pyslab
import pyslab.lab
import pyslab.policy
from pyslab.policy.registry import parse_spec


def _built(alloc: pyslab.SlabAllocator, name: str) -> pyslab.Policy:
    (policy,) = [p for p in alloc.policy.policies if type(p).name == name]
    return policy


def test_a_parameter_in_a_spec_reaches_the_policy() -> None:
    with pyslab.SlabAllocator(policy="reclaim(keep=4)") as alloc:
        assert alloc.policy.name == "reclaim(keep=4)"
        assert _built(alloc, "reclaim").keep == 4  # type: ignore[attr-defined]
        alloc.free(alloc.alloc(64))
        alloc.validate()


def test_every_part_of_a_composition_gets_its_own_parameters() -> None:
    spec = "thread-cache(magazine=16)+dict-lookup+debug(poison=False, redzone_size=32)"
    with pyslab.SlabAllocator(policy=spec) as alloc:
        assert alloc.policy.name == (
            "thread-cache(magazine=16)+dict-lookup+debug(poison=False, redzone_size=32)"
        )
        cache = _built(alloc, "thread-cache")
        assert (cache.magazine, cache.batch) == (16, 8)  # type: ignore[attr-defined]
        debug = _built(alloc, "debug")
        assert debug.poison is False and debug.redzone_size == 32  # type: ignore[attr-defined]
        alloc.free(alloc.alloc(24))


def test_python_literals_are_read_and_plus_inside_parentheses_or_quotes_does_not_split() -> None:
    (part,) = parse_spec(
        "x(n=1_000, neg=-2, f=0.5, yes=True, no=False, none=None, s='a+b', t=\"(c)+d\","
        " u='''e+'f)''', z=1+2j, lst=[1, 2])"
    )
    assert part.name == "x"
    assert dict(part.params) == {
        "n": 1000, "neg": -2, "f": 0.5, "yes": True, "no": False, "none": None, "s": "a+b",
        "t": "(c)+d", "u": "e+'f)", "z": 1 + 2j, "lst": [1, 2],
    }


def test_the_normalised_text_keeps_the_values_as_written() -> None:
    parts = parse_spec("  dict-lookup +  reclaim(  keep = 1_000 , ) + stats() ")
    assert [p.text for p in parts] == ["dict-lookup", "reclaim(keep=1_000)", "stats"]
    assert [p.name for p in parts] == ["dict-lookup", "reclaim", "stats"]
    (quoted,) = parse_spec("x( s = 'two  spaces + one' )")
    assert quoted.text == "x(s='two  spaces + one')"
    assert parse_spec(quoted.text) == (quoted,)


def test_set_policy_takes_a_spec_with_parameters() -> None:
    with pyslab.SlabAllocator(policy="reclaim(keep=1_000)") as alloc:
        blocks = [alloc.alloc(512) for _ in range(4 * (alloc.slab_size // 512))]
        for block in blocks:
            alloc.free(block)
        kept = alloc.page_source.mapped_bytes
        assert kept >= 4 * alloc.slab_size  # keep=1_000: every empty slab stays mapped
        alloc.set_policy("dict-lookup+reclaim(keep=0)")
        assert _built(alloc, "reclaim").keep == 0  # type: ignore[attr-defined]
        assert alloc.page_source.mapped_bytes == 0  # keep=0: every empty slab goes back
        alloc.validate()


def test_a_spec_set_policy_refuses_leaves_the_old_policy_in_place() -> None:
    with pyslab.SlabAllocator(policy="reclaim(keep=2)") as alloc:
        old = alloc.policy
        with pytest.raises(pyslab.PolicyError, match=r"'reclaim' refuses keep=-1"):
            alloc.set_policy("dict-lookup+reclaim(keep=-1)")
        assert alloc.policy is old
        alloc.free(alloc.alloc(8))
        alloc.validate()


def test_a_sequence_mixes_instances_and_specs_with_parameters() -> None:
    lookup = pyslab.make_policy("dict-lookup")
    with pyslab.SlabAllocator(policy=[lookup, "reclaim(keep=3)+stats"]) as alloc:
        assert alloc.policy.name == "dict-lookup+reclaim(keep=3)+stats"
        assert alloc.policy.policies[1] is lookup
        assert _built(alloc, "reclaim").keep == 3  # type: ignore[attr-defined]


def test_run_workload_passes_the_parameters_and_labels_the_run_with_the_spec() -> None:
    released = pyslab.lab.run_workload("ramp", "reclaim(keep=0)", ops=2000)
    kept = pyslab.lab.run_workload("ramp", "reclaim(keep=1_000)", ops=2000)
    assert (released.configuration, kept.configuration) == (
        "reclaim(keep=0)", "reclaim(keep=1_000)"
    )
    assert released.slabs_reclaimed == released.slabs_created > 0
    assert kept.slabs_reclaimed == 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", r"^empty policy spec ''"),
        ("  \t", r"^empty policy spec '  \\t'"),
        ("dict-lookup+", r"'dict-lookup\+': part 2 of 2 is empty"),
        ("+", r"'\+': part 1 of 2 is empty"),
        ("+reclaim", r"'\+reclaim': part 1 of 2 is empty"),
        ("dict-lookup++reclaim", r"part 2 of 3 is empty"),
        ("reclaim(keep=4", r"unbalanced parentheses: the '\(' at character 8 .* never closed"),
        ("reclaim)keep=4(", r"unbalanced parentheses: the '\)' at character 8 .* has no '\('"),
        ("reclaim(keep='4)", r"unterminated string: the ' at character 14"),
        ("reclaim(4)", r"4 is given to 'reclaim' by position; .*reclaim\(key=value\) "
                       r"\(it takes: keep=4\)"),
        ("reclaim(*sizes)", r"\*sizes is given to 'reclaim' by position"),
        ("reclaim(**options)", r"\*\*options is given to 'reclaim'; parameters go by name"),
        ("reclaim(keep=1, keep=2)", r"parameter 'keep' of 'reclaim' is given twice"),
        ("reclaim(keep=four)", r"the value four of parameter 'keep' of 'reclaim' is not a "
                               r"Python literal"),
        ("reclaim(keep=)", r"cannot read the parameters of 'reclaim\(keep=\)'"),
        ("reclaim(keep=4)x", r"part 'reclaim\(keep=4\)x' has text after"),
        ("dict-lookup+(keep=4)", r"part '\(keep=4\)' names no policy"),
        ("reclaim keep=4", r"'reclaim keep=4' is not a policy name"),
    ],
)
def test_a_spec_that_cannot_be_read_is_a_policy_error_naming_the_bad_part(
    spec: str, message: str
) -> None:
    with pytest.raises(pyslab.PolicyError, match=message):
        parse_spec(spec)
    with pytest.raises(pyslab.PolicyError, match=message):
        pyslab.SlabAllocator(policy=spec)


def test_an_empty_spec_is_refused_everywhere_a_spec_is_taken() -> None:
    with pytest.raises(pyslab.PolicyError, match="empty policy spec"):
        pyslab.SlabAllocator(policy=["dict-lookup", ""])
    with pytest.raises(pyslab.PolicyError, match="empty policy spec"):
        pyslab.lab.run_workload("uniform", "", ops=10)
    with pyslab.SlabAllocator() as alloc, pytest.raises(pyslab.PolicyError, match="empty"):
        alloc.set_policy(" ")
    with pyslab.SlabAllocator(policy=[]) as alloc:  # no policy chosen: the default
        default = "dict-lookup+reclaim+thread-cache(magazine=16)"
        assert alloc.policy.name == pyslab.policy.DEFAULT_POLICY == default


def test_an_unknown_parameter_lists_the_ones_the_policy_takes() -> None:
    with pytest.raises(
        pyslab.PolicyError,
        match=r"^policy 'thread-cache' does not take parameter 'size'; "
        r"it takes: magazine=64, batch=None$",
    ):
        pyslab.SlabAllocator(policy="dict-lookup+thread-cache(size=16)")
    with pytest.raises(
        pyslab.PolicyError,
        match=r"'first-fit' does not take parameters 'a', 'b'; it takes no parameters",
    ):
        pyslab.SlabAllocator(policy="first-fit(a=1, b=2)")


def test_an_unknown_name_with_parameters_is_an_unknown_policy_error() -> None:
    with pytest.raises(pyslab.UnknownPolicyError, match=r"unknown policy 'best-fit'; known"):
        pyslab.SlabAllocator(policy="dict-lookup+best-fit(slack=2)")


@pytest.mark.parametrize(
    ("spec", "refused", "cause"),
    [
        ("reclaim(keep=-1)", "'reclaim' refuses keep=-1: keep must be at least 0", ValueError),
        ("reclaim(keep='4')", "'reclaim' refuses keep='4': keep must be an int", TypeError),
        ("thread-cache(magazine=4, batch=8)",
         "'thread-cache' refuses magazine=4, batch=8: batch 8 exceeds magazine 4", ValueError),
        ("coloring(cache_line=1e3)", "'coloring' refuses cache_line=1000.0", TypeError),
    ],
)
def test_a_value_the_policy_refuses_is_a_policy_error_chained_to_its_reason(
    spec: str, refused: str, cause: type[Exception]
) -> None:
    with pytest.raises(pyslab.PolicyError, match=refused) as caught:
        pyslab.SlabAllocator(policy=spec)
    assert type(caught.value.__cause__) is cause


def test_make_policy_still_raises_the_constructors_own_error() -> None:
    with pytest.raises(TypeError, match="keep must be an int") as caught:
        pyslab.make_policy("reclaim", keep="4")
    assert not isinstance(caught.value, pyslab.PolicyError)


def test_a_value_is_read_as_a_literal_never_evaluated(tmp_path: Path) -> None:
    target = tmp_path / "written"
    spec = f"reclaim(keep=open({str(target)!r}, 'w').write('x'))"
    with pytest.raises(pyslab.PolicyError, match="is not a Python literal"):
        pyslab.SlabAllocator(policy=spec)
    assert not target.exists()


def test_a_spec_is_read_in_full_before_any_policy_is_built() -> None:
    # The bad second part is found before the first is built: no error about 'nope' first.
    with pytest.raises(pyslab.PolicyError, match="part 2 of 2 is empty"):
        pyslab.SlabAllocator(policy="nope(x=1)+")


def test_a_spec_that_is_not_a_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="must be a string, not 42"):
        parse_spec(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["-" * 7000 + "1", "1" * 4001])
def test_parameters_too_long_to_read_are_refused_before_parsing(value: str) -> None:
    # Nested beyond its limits, CPython's parser says MemoryError, which the allocator keeps
    # for memory running out: the length is refused first, naming it.
    with pytest.raises(pyslab.PolicyError, match=f"are {len(value) + 5:,} characters long"):
        pyslab.SlabAllocator(policy=f"reclaim(keep={value})")


def test_a_missing_required_parameter_is_named() -> None:
    class Needs(pyslab.Policy):
        name = "needs"

        def __init__(self, depth: int) -> None:
            self.depth = depth

    from pyslab.policy.entry_points import _Parameters

    parameters = _Parameters.of(Needs)
    assert parameters is not None
    assert parameters.problem({}) == "needs parameter 'depth'"
    assert parameters.problem({"depth": 1, "width": 2}) == "does not take parameter 'width'"
    assert parameters.problem({"depth": 1}) == ""
