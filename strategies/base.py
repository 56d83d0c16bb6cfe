"""The strategy interface: a pure object that picks one backend for a request."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from mypy_extensions import mypyc_attr


class BackendView(Protocol):
    """What a strategy may read of a backend's runtime state."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> int:
        """Effective weight: lowered while a readmitted backend ramps up (slow start)."""

    @property
    def base_weight(self) -> int:
        """The configured weight on the same scale, unaffected by slow start (for
        consistent hashing, whose table must not be rebuilt as a ramp progresses)."""

    @property
    def in_flight(self) -> int:
        """Requests sent to it and not yet fully answered, open event streams included."""

    @property
    def streams(self) -> int:
        """Of ``in_flight``: open event streams (long-lived, mostly idle)."""

    @property
    def sessions(self) -> int:
        """MCP sessions bound to it."""

    @property
    def max_sessions(self) -> int | None:
        """MCP sessions it may hold; None for no limit."""

    @property
    def available(self) -> bool: ...


B = TypeVar("B", bound=BackendView)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """The facts of a request that a strategy may route on."""

    client_address: str
    method: str
    path: str
    headers: Sequence[tuple[bytes, bytes]]  # names lower-cased, in arrival order
    session_id: str | None = None

    def header(self, name: bytes) -> bytes | None:
        """First value of a header (``name`` lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


NO_FACTS = RequestFacts("", "", "", ())


class StrategyOptionError(ValueError):
    """An option passed to a strategy is invalid; the message names the option."""


# Not an ABC: the compiled build makes the built-in strategies mypyc native classes, which
# get no ABC bookkeeping of their own (ABCMeta.__new__ never runs for them): they would
# share abc.ABC's subclass cache, so isinstance() against them would answer whatever was
# asked first, and they could never be abstract. ``unimplemented`` does the ABC's check in
# both builds instead, and mypy still reports an abstract class being instantiated.
# allow_interpreted_subclasses: plugin strategies are Python subclasses (compiled build).
@mypyc_attr(allow_interpreted_subclasses=True)
class Strategy:
    """Picks among backends; never does I/O and never reads a clock it was not given."""

    name: ClassVar[str] = ""
    # False for strategies that never look at the request: the relay then skips
    # building RequestFacts on its hot path and passes NO_FACTS.
    uses_request: ClassVar[bool] = True
    # True for strategies that index the backends by load: the proxy then calls
    # ``load_changed`` whenever a backend's in-flight, stream or session count changes.
    tracks_load: ClassVar[bool] = False
    # The methods this class declares abstract (a subclass adding some lists its own).
    abstract_methods: ClassVar[tuple[str, ...]] = ("pick",)

    def __init__(self, **options: Any) -> None:
        missing = unimplemented(type(self))
        if missing:  # as ABCMeta's check, which this class does not have
            raise TypeError(
                f"Can't instantiate abstract class {type(self).__name__}"
                f" with abstract method(s) {', '.join(missing)}"
            )
        if options:
            unknown = ", ".join(sorted(options))
            raise StrategyOptionError(f"unknown option(s): {unknown}")

    def load_changed(self, backend: BackendView) -> None:
        """``backend``'s ``in_flight``, ``streams`` or ``sessions`` just changed (called
        only for strategies with ``tracks_load``)."""
        return None

    @abstractmethod
    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        """Return an available backend for ``request``, or None when none is available.

        The relay passes the cluster's routing list, a new list object whenever a
        backend's membership, availability or weight changes. So the list object passed
        again may be taken as unchanged: built-in strategies index it (keyed on its
        identity, holding a reference so the id is not reused) to pick in O(1) or
        O(log n), and check only what they pick. Any other list (a retry's, each a new
        object) is scanned, as every list was before.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement pick()")


def unimplemented(cls: type) -> list[str]:
    """The abstract methods (``abstract_methods`` of ``cls`` and its bases) that ``cls``
    still has as they were declared, sorted: empty when it may be instantiated. A
    plugin's own ABC-style abstract methods (``__abstractmethods__``) count too."""
    missing: set[str] = set(getattr(cls, "__abstractmethods__", ()))
    for klass in cls.__mro__:
        for name in vars(klass).get("abstract_methods", ()):
            if getattr(cls, name, None) is getattr(klass, name, None):
                missing.add(name)
    return sorted(missing)
