"""Value classes without the start-up cost of :mod:`dataclasses`.

Every governed ``bash`` starts a fresh Python, and the frontend defines ~70 value classes.
The standard decorator compiles each class's methods with ``exec`` (~1.3 ms a class on
this VM) and imports ``inspect`` (~25 ms): together most of the cold-path budget
(ARCHITECTURE §10). This decorator builds the same behaviour from shared closures, so a
class costs a few microseconds to define.

Supported, with dataclasses' meaning: ``@dataclass`` and ``@dataclass(frozen=True)``
(``slots`` is accepted and ignored), fields from annotations in definition order
(inherited fields first), plain defaults, ``field(default=..., default_factory=...,
repr=..., compare=...)``, ``__post_init__``, generated ``__init__``/``__repr__``/``__eq__``,
``__hash__`` for frozen classes, ``__match_args__``; and ``replace``, ``fields``, ``asdict``.
``typing.dataclass_transform`` tells mypy the decorated classes behave like dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

_T = TypeVar("_T")
_FIELDS = "__record_fields__"
_MISSING: Any = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen instance."""


class Field:
    """What ``field()`` returns: a default, a default factory, and whether repr shows it."""

    __slots__ = ("compare", "default", "default_factory", "name", "repr")

    def __init__(self, default: Any, default_factory: Any, repr: bool, compare: bool) -> None:
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.compare = compare


def field(
    *,
    default: Any = _MISSING,
    default_factory: Callable[[], Any] | None = None,
    repr: bool = True,
    compare: bool = True,
) -> Any:
    """A field with a default or a default factory (as ``dataclasses.field``); ``compare``
    False leaves it out of ``==`` and ``hash``."""
    return Field(default, default_factory, repr, compare)


def _collect(cls: type) -> tuple[Field, ...]:
    found: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in getattr(base, _FIELDS, ()):
            found[f.name] = f
    # Not inspect.get_annotations: importing inspect is what this module avoids.
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, _MISSING)
        f = value if isinstance(value, Field) else Field(value, None, True, True)
        f.name = name
        if isinstance(value, Field):
            if f.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        found[name] = f
    return tuple(found.values())


def _compared(self: Any) -> tuple[Any, ...]:
    return tuple(self.__dict__[f.name] for f in getattr(self, _FIELDS) if f.compare)


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    specs: tuple[Field, ...] = getattr(self, _FIELDS)
    if len(args) > len(specs):
        raise TypeError(f"{type(self).__name__}() takes {len(specs)} arguments, got {len(args)}")
    put = object.__setattr__
    for spec, value in zip(specs, args, strict=False):
        if spec.name in kwargs:
            raise TypeError(f"{type(self).__name__}() got multiple values for {spec.name!r}")
        put(self, spec.name, value)
    for spec in specs[len(args) :]:
        if spec.name in kwargs:
            put(self, spec.name, kwargs.pop(spec.name))
        elif spec.default is not _MISSING:
            put(self, spec.name, spec.default)
        elif spec.default_factory is not None:
            put(self, spec.name, spec.default_factory())
        else:
            raise TypeError(f"{type(self).__name__}() missing argument {spec.name!r}")
    if kwargs:
        raise TypeError(f"{type(self).__name__}() got unexpected arguments {sorted(kwargs)}")
    post = getattr(self, "__post_init__", None)
    if post is not None:
        post()


def _repr(self: Any) -> str:
    shown = ", ".join(
        f"{f.name}={self.__dict__[f.name]!r}" for f in getattr(self, _FIELDS) if f.repr
    )
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: object) -> Any:
    # Any: NotImplemented for another class, as dataclasses (Python then tries other.__eq__).
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared(self) == _compared(other)


def _hash(self: Any) -> int:
    return hash(_compared(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _build(cls: type[_T], frozen: bool) -> type[_T]:
    specs = _collect(cls)
    methods: dict[str, Any] = {
        _FIELDS: specs,
        "__init__": _init,
        "__repr__": _repr,
        "__eq__": _eq,
        "__match_args__": tuple(f.name for f in specs),
        "__hash__": _hash if frozen else None,  # mutable and eq: unhashable, as dataclasses
    }
    if frozen:
        methods["__setattr__"] = _frozen_setattr
        methods["__delattr__"] = _frozen_delattr
    for name, value in methods.items():
        setattr(cls, name, value)
    return cls


@overload
def dataclass(cls: type[_T], /) -> type[_T]: ...
@overload
def dataclass(*, frozen: bool = False, slots: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(field_specifiers=(field, Field))
def dataclass(
    cls: type[_T] | None = None, /, *, frozen: bool = False, slots: bool = False
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """Make ``cls`` a value class (see the module docstring)."""
    del slots  # accepted for compatibility; instances keep a __dict__
    if cls is not None:
        return _build(cls, frozen)
    return lambda c: _build(c, frozen)


def fields(obj: Any) -> tuple[Field, ...]:
    """The fields of a value class or instance, in order."""
    return tuple(getattr(obj, _FIELDS))


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of ``obj`` with ``changes`` applied (``__init__`` and ``__post_init__`` run)."""
    values = {f.name: obj.__dict__[f.name] for f in fields(obj)}
    values.update(changes)
    return type(obj)(**values)


def asdict(obj: Any) -> dict[str, Any]:
    """Fields as a dict, recursing into value classes, lists, tuples and dicts."""
    return {f.name: _plain(obj.__dict__[f.name]) for f in fields(obj)}


def _plain(value: Any) -> Any:
    if hasattr(value, _FIELDS) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
