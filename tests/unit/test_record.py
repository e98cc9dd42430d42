"""agentsh.enforce.record behaves like dataclasses for everything the code base uses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agentsh.enforce.record import FrozenInstanceError, asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Labelled(Point):
    label: str = "p"
    hidden: str = field(default="secret", repr=False)


@dataclass
class Bag:
    items: list[int] = field(default_factory=list)
    checked: bool = False

    def __post_init__(self) -> None:
        self.checked = True


def test_init_defaults_and_keywords() -> None:
    assert (Point(1).x, Point(1).y, Point(1, y=2).y) == (1, 0, 2)
    with pytest.raises(TypeError, match="missing argument 'x'"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected"):
        Point(1, z=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values"):
        Point(1, x=2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 3 arguments"):
        Point(1, 2, (), 4)  # type: ignore[call-arg]


def test_frozen_equality_hash_and_repr() -> None:
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.x  # type: ignore[misc]
    assert p == Point(1, 2)
    assert p != Point(2, 1)
    assert p != Labelled(1, 2), "different classes never compare equal"
    assert len({p, Point(1, 2)}) == 1
    assert repr(p) == "Point(x=1, y=2, tags=())"
    assert "secret" not in repr(Labelled(1))


def test_inherited_fields_come_first() -> None:
    assert [f.name for f in fields(Labelled)] == ["x", "y", "tags", "label", "hidden"]
    assert Labelled(1, 2, (), "q").label == "q"


def test_mutable_class_factory_and_post_init() -> None:
    a, b = Bag(), Bag()
    a.items.append(1)
    assert b.items == []
    assert a.checked
    with pytest.raises(TypeError):
        hash(a)


def test_replace_asdict_and_match() -> None:
    p = replace(Point(1, 2), y=5)
    assert p == Point(1, 5)
    assert asdict(Labelled(1, tags=("a",))) == {
        "x": 1,
        "y": 0,
        "tags": ("a",),
        "label": "p",
        "hidden": "secret",
    }
    match p:
        case Point(x, y):
            assert (x, y) == (1, 5)
        case _:
            pytest.fail("class pattern did not match")


def test_importing_the_frontend_does_not_import_dataclasses() -> None:
    """The point of the module: the cold path never pays for dataclasses/inspect."""
    code = (
        "import sys, agentsh.shell.run, agentsh.shell.__main__;"
        "print(sorted(m for m in ('dataclasses', 'inspect') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
