"""Registries: for each kind of part a run is made of, the one list of names the config may use.

* :data:`BACKBONES`: name → backbone class, called with the keyword arguments of ``model`` it accepts
  (``pretrained``, ``pooling``, ``grad_checkpointing``, ``width``);
* :data:`METHODS`: name → method class, called as ``cls(backbone, num_classes, embedding_dim=..., **options)``
  with ``options`` the fields of the method's own config section (a dataclass registered with it);
* :data:`LOSSES`: name → loss factory, called as ``factory(num_classes, embedding_dim, **options)``;
* :data:`DATASETS`: name → factory, called as ``factory(data_config, train_transform, test_transform)``
  and returning a :class:`~pygml.data.DatasetSplits`.

User code adds its own parts with the decorators and names them in a config, after importing its module
(``pygml-train --import my_module method=mine``)::

    from dataclasses import dataclass
    from pygml.app import register_method
    from pygml.methods import MetricLearner

    @dataclass
    class MineConfig:
        margin: float = 0.2

    @register_method("mine", options=MineConfig)      # config section `mine:` with key `margin`
    class Mine(MetricLearner):
        def __init__(self, backbone, num_classes, embedding_dim=128, margin=0.2): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered part: its name, the object to call, and what the registry keeps beside it."""

    name: str
    obj: T
    options: Optional[type] = None
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Names → parts of one kind; the single list of the names the config accepts for that kind."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind  # "method", ...
        self.key = key  # the config key that names an entry: "method", "model.backbone", ...
        self._entries: dict[str, Entry[T]] = {}
        #: bumped on every registration, so derived tables (the config schema) know to rebuild
        self.version = 0

    def register(self, name: str, obj: Optional[T] = None, *, options: Optional[type] = None,
                 replace: bool = False, **meta: Any) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, a decorator. A name already taken is an error
        unless ``replace``."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a {self.kind} name must be an identifier (letters, digits, _), got {name!r}")

        def add(target: T) -> T:
            if name in self._entries and not replace and self._entries[name].obj is not target:
                raise ValueError(f"{self.kind} {name!r} is registered already (by {self._entries[name].obj!r}); "
                                 "pass replace=True to replace it")
            self._entries[name] = Entry(name, target, options, dict(meta))
            self.version += 1
            return target

        return add if obj is None else add(obj)

    def get(self, name: str) -> Entry[T]:
        """The entry named ``name``; a ``KeyError`` lists the registered names."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"{self.key}={name!r} is not a registered {self.kind}; registered: "
                           f"{', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self.names())})"


BACKBONES: Registry[Callable[..., Any]] = Registry("backbone", "model.backbone")
METHODS: Registry[Callable[..., Any]] = Registry("method", "method")
LOSSES: Registry[Callable[..., Any]] = Registry("loss", "loss.name")
DATASETS: Registry[Callable[..., Any]] = Registry("dataset", "data.name")


def register_backbone(name: str, obj: Any = None, **kw: Any) -> Any:
    """Register a backbone class (see :data:`BACKBONES`); a decorator without ``obj``."""
    return BACKBONES.register(name, obj, **kw)


def register_method(name: str, obj: Any = None, *, options: Optional[type] = None, **kw: Any) -> Any:
    """Register a method class with the dataclass of its config section (see :data:`METHODS`)."""
    return METHODS.register(name, obj, options=options, **kw)


def register_loss(name: str, obj: Any = None, **kw: Any) -> Any:
    """Register a loss factory ``(num_classes, embedding_dim, **options) -> nn.Module`` (see :data:`LOSSES`)."""
    return LOSSES.register(name, obj, **kw)


def register_dataset(name: str, obj: Any = None, **kw: Any) -> Any:
    """Register a dataset factory ``(data_config, train_transform, test_transform) -> DatasetSplits``."""
    return DATASETS.register(name, obj, **kw)


__all__ = ["BACKBONES", "DATASETS", "Entry", "LOSSES", "METHODS", "Registry", "register_backbone",
           "register_dataset", "register_loss", "register_method"]
