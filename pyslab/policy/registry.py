"""Finding policy plugins by name through the ``pyslab.policies`` entry-point group, and
reading policy specs.

The core knows no plugin module: the built-in policies are registered in pyslab's own
``pyproject.toml`` exactly as a third-party package registers one::

    [project.entry-points."pyslab.policies"]
    my-policy = "my_package.my_module:MyPolicy"

Entry points are read once per process, on first use; each plugin class is checked when it is
loaded (a :class:`~pyslab.Policy` subclass), with an error naming it when it is not (the
shared :class:`~pyslab.policy.entry_points.EntryPointRegistry`, which workloads use too). A
plugin whose module fails to import is listed by :func:`policy_entries` with its error, left
out of :func:`policies` (with a warning), and refused by :func:`make_policy` with a
:class:`~pyslab.PolicyError` chained to the import error.

Policy specs
------------
Wherever a policy is named by a string (``SlabAllocator(policy=...)``, ``set_policy``,
:func:`pyslab.lab.run_workload`, ``pyslab compare -p``...), the string is a *spec*: one or more
parts joined by ``+``, each a registered policy's name, with parameters in parentheses when the
defaults will not do::

    spec  := part ( "+" part )*
    part  := name | name "(" [ key "=" value ( "," key "=" value )* [","] ] ")"
    value := a Python literal: 4, 1_000, -1, 0.5, True, False, None, 'text', "text"

For example ``dict-lookup+reclaim``, ``reclaim(keep=4)``,
``thread-cache(magazine=16, batch=4)+dict-lookup``. Each part becomes
``make_policy(name, **params)``, in order, after ``first-fit`` (the base of every composition,
added unless the spec starts with it). Whitespace around parts, keys and values does not
matter; ``+`` inside parentheses or quotes does not split. Values are read by
:func:`ast.literal_eval`, never evaluated. :func:`parse_spec` reads a spec without building it.

A spec that cannot be read raises :class:`~pyslab.PolicyError` naming the spec and what is
wrong in it: an empty spec (``""``, whitespace only), an empty part (``dict-lookup+``, ``+``,
``+reclaim``, ``a++b``), unbalanced parentheses, an unterminated string, a part that is not
``name`` or ``name(...)``, a parameter given by position or twice, or a value that is not a
literal. Building it raises :class:`~pyslab.UnknownPolicyError` for an unknown name, and
:class:`~pyslab.PolicyError` for a parameter the policy does not take (listing those it takes)
or a value its constructor refuses (naming the policy and the parameters, chained to the
constructor's TypeError or ValueError).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from pyslab.errors import PolicyError, UnknownPolicyError

from .entry_points import EntryPointRegistry, PluginEntry
from .interface import Policy

__all__ = [
    "BASE_POLICY",
    "DEFAULT_POLICY",
    "PolicyPart",
    "PolicySpec",
    "make_policy",
    "parse_policies",
    "parse_spec",
    "policies",
    "policy_entries",
]

GROUP: Final = "pyslab.policies"
BASE_POLICY: Final = "first-fit"
"""The base of every composition: the first-fit walk of the Rust ``slab-alloc`` allocator,
which provides every decision the other policies do not take."""
DEFAULT_POLICY: Final = "dict-lookup+reclaim+thread-cache(magazine=16)"
"""What ``policy=None`` builds: O(1) frees (``dict-lookup``), empty slabs given back beyond four
per class (``reclaim``), and per-thread magazines of 16 blocks per class in front
(``thread-cache``), so that the common alloc and free take no lock. ``first-fit`` alone, under
its name, is the original design, with its O(slabs) free."""

PolicySpec: TypeAlias = "Policy | str | Sequence[Policy | str] | None"
"""What ``policy=`` accepts: an instance, a spec string (``"reclaim"``, ``"a+b"``,
``"reclaim(keep=4)"``: module docstring), a sequence of those, or None (:data:`DEFAULT_POLICY`)."""

_REGISTRY: Final = EntryPointRegistry(
    GROUP, Policy, "policy", "policies", unknown=UnknownPolicyError, invalid=PolicyError
)


def policies() -> dict[str, str]:
    """Every registered policy that loads, with its one-line description, sorted by name.

    A policy whose entry point fails to load (its module raises on import, or it names
    something that is not a ``Policy`` subclass) is left out, with a
    :class:`~pyslab.PyslabWarning` naming it and the error, so that one broken third-party
    package does not break every caller; :func:`policy_entries` lists it with its error, and
    :func:`make_policy` raises :class:`~pyslab.PolicyError` for it.

    Complexity: O(registered policies); each plugin module is imported on the first call.
    """
    return _REGISTRY.descriptions()


def policy_entries() -> list[PluginEntry]:
    """Every registered policy entry point, sorted by name, with its description when it
    loads and the error it raised when it does not (``pyslab policies`` prints them).

    Never raises for a plugin that fails to load.

    Complexity: O(registered policies); each plugin module is imported on the first call.
    """
    return _REGISTRY.entries()


def make_policy(name: str, /, **params: object) -> Policy:
    """Build a fresh instance of the policy registered as ``name``, with ``params``.

    ``make_policy("reclaim", keep=4)`` builds what the spec ``"reclaim(keep=4)"`` names.

    Raises:
        UnknownPolicyError: no policy has that name (the message lists the known ones).
        PolicyError: the policy takes no parameter of such a name (the message lists those it
            takes), or its entry point cannot be loaded (chained to the import error).
        TypeError, ValueError: a parameter's value is refused by the policy itself (as its
            constructor raises it; a spec string turns it into PolicyError).

    Complexity: O(parameters) plus the policy's constructor; the first use of a name imports
    its module.
    """
    policy = _REGISTRY.make(name, params)
    if params:
        listed = ", ".join(f"{key}={value!r}" for key, value in params.items())
        policy._spec = f"{name}({listed})"
    return policy


def parse_policies(spec: PolicySpec) -> list[Policy]:
    """Turn a ``policy=`` argument into instances, ``first-fit`` (the base) first.

    Strings are specs (module docstring), read in full before any part is built; names are
    instantiated afresh, so two allocators never share a policy made from a name. None and an
    empty sequence give :data:`DEFAULT_POLICY`; an empty string is an error.

    Raises:
        PolicyError: a spec cannot be read (an empty spec or part, unbalanced parentheses, a
            positional parameter, a value that is not a literal...), a policy does not take a
            parameter, or refuses its value; the message names the bad part.
        UnknownPolicyError: a name is not registered.
        TypeError: ``spec`` is neither None, a ``Policy``, a string nor a sequence of those
            (bytes included), or an item is neither a ``Policy`` nor a string.

    Complexity: O(length of the specs) to read them, plus each policy's constructor.
    """
    items: list[Policy | str]
    if spec is None:
        items = [DEFAULT_POLICY]
    elif isinstance(spec, (str, Policy)):
        items = [spec]
    elif isinstance(spec, (bytes, bytearray)) or not isinstance(spec, Iterable):
        raise TypeError(
            f"policy= takes a pyslab.Policy, a spec string such as 'dict-lookup+reclaim', or "
            f"a sequence of those, not {spec!r}"
        )
    else:
        items = list(spec) or [DEFAULT_POLICY]
    chosen: list[Policy] = []
    for item in items:
        if isinstance(item, Policy):
            chosen.append(item)
        elif isinstance(item, str):
            for part in parse_spec(item):  # no generator: out of memory, its close would print
                chosen.append(part.build())
        else:
            raise TypeError(f"a policy must be a pyslab.Policy or a spec string, not {item!r}")
    if not chosen or type(chosen[0]).name != BASE_POLICY:
        chosen.insert(0, make_policy(BASE_POLICY))
    return chosen


@dataclass(frozen=True)
class PolicyPart:
    """One part of a spec: a policy's name and the parameters to build it with."""

    name: str
    """The registered name, e.g. ``"reclaim"``."""
    params: Mapping[str, object] = field(hash=False)
    """The parameters, by name, as the literals of the spec read them."""
    text: str
    """The part as written, whitespace normalised: ``reclaim(keep=4)``."""

    def build(self) -> Policy:
        """A fresh instance: ``make_policy(name, **params)``.

        Raises:
            UnknownPolicyError: the name is not registered.
            PolicyError: the policy does not take a parameter, cannot be loaded, or its
                constructor refuses the values (chained to its TypeError or ValueError; the
                message names the policy and the parameters given).

        Complexity: that of the policy's constructor.
        """
        try:
            return make_policy(self.name, **self.params)
        except PolicyError:
            raise
        except (TypeError, ValueError) as error:
            given = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
            refused = f"refuses {given}" if given else "cannot be built"
            raise PolicyError(f"policy {self.name!r} {refused}: {error}") from error


_NAME: Final = re.compile(r"[^\s()+=,'\"]+")
"""What a policy name may be: no whitespace, and none of the characters of the syntax."""

_LITERALS: Final = "an int such as 1_000, a float, True, False, None or a quoted string"


def parse_spec(spec: str) -> tuple[PolicyPart, ...]:
    """Read a spec string (module docstring) into its parts, without building any policy.

    ``"+".join(part.text for part in parse_spec(spec))`` is the spec with its whitespace
    normalised.

    Raises:
        TypeError: ``spec`` is not a string.
        PolicyError: the spec is empty or whitespace only; a part is empty (``dict-lookup+``,
            ``+``, ``a++b``); parentheses are unbalanced or a string is unterminated; a part is
            not ``name`` or ``name(key=value, ...)``; a parameter is given by position, by
            ``**``, or twice; a value is not a Python literal. The message quotes the spec and
            names the bad part, parameter or value.

    Complexity: O(len(spec)).
    """
    if not isinstance(spec, str):
        raise TypeError(f"a policy spec must be a string, not {spec!r}")
    if not spec.strip():
        raise PolicyError(
            f"empty policy spec {spec!r}: write a policy name, name(key=value, ...), "
            "or parts joined by '+' such as 'dict-lookup+reclaim'"
        )
    cuts = [at for at, mark in _structure(spec, spec) if mark == "+"]
    bounds = zip([-1, *cuts], [*cuts, len(spec)], strict=True)
    pieces = [spec[start + 1 : end] for start, end in bounds]
    parts = []
    for number, piece in enumerate(pieces, start=1):
        if not piece.strip():
            raise PolicyError(
                f"policy spec {spec!r}: part {number} of {len(pieces)} is empty "
                "(each '+' needs a policy on both sides)"
            )
        parts.append(_parse_part(spec, piece.strip()))
    return tuple(parts)


def _structure(spec: str, text: str) -> list[tuple[int, str]]:
    """The offsets in ``text`` of its top-level ``+`` and of its outermost parentheses,
    outside strings. Raises PolicyError (quoting ``spec``) when they do not balance."""
    marks: list[tuple[int, str]] = []
    opened: list[int] = []
    at = 0
    while at < len(text):
        char = text[at]
        if char in "'\"":
            quote = char * 3 if text.startswith(char * 3, at) else char
            end = at + len(quote)
            while not text.startswith(quote, end):
                if end >= len(text):
                    raise PolicyError(
                        f"policy spec {spec!r}: unterminated string: the {quote} at "
                        f"character {at + 1} of {text!r} is never closed"
                    )
                end += 2 if text[end] == "\\" else 1
            at = end + len(quote)
            continue
        if char == "(":
            opened.append(at)
            if len(opened) == 1:
                marks.append((at, char))
        elif char == ")":
            if not opened:
                raise PolicyError(
                    f"policy spec {spec!r}: unbalanced parentheses: the ')' at character "
                    f"{at + 1} of {text!r} has no '('"
                )
            opened.pop()
            if not opened:
                marks.append((at, char))
        elif char == "+" and not opened:
            marks.append((at, char))
        at += 1
    if opened:
        raise PolicyError(
            f"policy spec {spec!r}: unbalanced parentheses: the '(' at character "
            f"{opened[0] + 1} of {text!r} is never closed"
        )
    return marks


def _parse_part(spec: str, text: str) -> PolicyPart:
    """One part, stripped and balanced: ``name`` or ``name(key=value, ...)``."""
    marks = _structure(spec, text)
    if not marks:
        name, inner = text, ""
    else:
        opening, closing = marks[0][0], marks[1][0]
        if len(marks) > 2 or closing != len(text) - 1:
            raise PolicyError(
                f"policy spec {spec!r}: part {text!r} has text after its parameters' ')'"
            )
        name, inner = text[:opening].strip(), text[opening + 1 : closing]
    if not name:
        raise PolicyError(f"policy spec {spec!r}: part {text!r} names no policy before '('")
    if not _NAME.fullmatch(name):
        raise PolicyError(
            f"policy spec {spec!r}: {name!r} is not a policy name "
            "(a part is name or name(key=value, ...))"
        )
    params, shown = _parse_parameters(spec, name, text, inner) if inner.strip() else ({}, [])
    return PolicyPart(name, params, f"{name}({', '.join(shown)})" if shown else name)


_LONGEST_PARAMETERS: Final = 4000
"""The longest text between a part's parentheses that a spec may hold."""


def _parse_parameters(
    spec: str, name: str, text: str, inner: str
) -> tuple[dict[str, object], list[str]]:
    """The parameters between a part's parentheses, and each as written (``key=value``)."""
    if len(inner) > _LONGEST_PARAMETERS:
        # Refused before parsing: CPython's parser reports a text nested beyond its limits
        # (some 6,000 unary operators) as MemoryError, which must mean memory ran out.
        raise PolicyError(
            f"policy spec {spec!r}: the parameters of {name!r} are {len(inner):,} characters "
            f"long; at most {_LONGEST_PARAMETERS:,} are read"
        )
    source = f"_({inner})"
    try:
        call = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, RecursionError) as error:
        reason = error.msg if isinstance(error, SyntaxError) else type(error).__name__
        raise PolicyError(
            f"policy spec {spec!r}: cannot read the parameters of {text!r} ({reason}): "
            "write key=value, separated by commas"
        ) from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise PolicyError(
            f"policy spec {spec!r}: cannot read the parameters of {text!r}: "
            "write key=value, separated by commas"
        )

    def written(node: ast.AST) -> str:
        return ast.get_source_segment(source, node) or ast.unparse(node)

    by_name = f"parameters go by name, as {name}(key=value){_takes(name)}"
    if call.args:
        raise PolicyError(
            f"policy spec {spec!r}: {written(call.args[0])} is given to {name!r} by position; "
            + by_name
        )
    params: dict[str, object] = {}
    shown = []
    for keyword in call.keywords:
        value_text = written(keyword.value)  # exactly as written: a string keeps its spaces
        if keyword.arg is None:
            raise PolicyError(
                f"policy spec {spec!r}: **{value_text} is given to {name!r}; " + by_name
            )
        if keyword.arg in params:
            raise PolicyError(
                f"policy spec {spec!r}: parameter {keyword.arg!r} of {name!r} is given twice"
            )
        params[keyword.arg] = _literal(keyword.value, spec, name, keyword.arg, value_text)
        shown.append(f"{keyword.arg}={value_text}")
    return params, shown


def _literal(node: ast.expr, spec: str, name: str, key: str, text: str) -> object:
    """The value of parameter ``key`` of ``name``, written ``text``. A function of its own:
    an ``except`` late in a long function does not return under persistent out of memory
    (see "Out of memory" in pyslab.core.guard).

    Raises:
        PolicyError: ``text`` is not a Python literal.
    """
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        raise PolicyError(
            f"policy spec {spec!r}: the value {text} of parameter {key!r} of {name!r} is not "
            f"a Python literal ({_LITERALS})"
        ) from None


def _takes(name: str) -> str:
    """`` (it takes: keep=1)`` for a policy that loads, else nothing."""
    try:
        parameters = _REGISTRY.parameters_of(name)
    except PolicyError:
        return ""
    return f" (it takes: {parameters})" if parameters else " (it takes no parameters)"
