"""Names bound to a class and default keyword arguments, as Lightning's `STRATEGY_REGISTRY` and
`ACCELERATOR_REGISTRY`: a preset such as `ddp_find_unused_parameters_true` is a name, not a subclass. A class may be
given as `"module:Class"`, imported when first used, so that listing names imports no optional package."""
from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

from fabric_kit.lazy import resolve

T = TypeVar("T", bound=type)


class Entry(NamedTuple):
    target: type | str  # the class, or "module:Class"
    kwargs: dict[str, Any]
    description: str

    @property
    def class_path(self) -> str:
        """`"module:Class"` of the registered class, for comparing entries without importing them."""
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"

    def resolve(self) -> type:
        if isinstance(self.target, type):
            return self.target
        cls: type = resolve(self.target)
        return cls


class Registry(dict[str, Entry]):
    """`register(name, cls, description, override=False, **init_params)`, `get(name)` (an instance built with the
    registered arguments), `remove(name)`; a `dict` of `Entry` otherwise."""

    kind = "entry"

    def register(self, name: str, cls: type | str | None = None, description: str | None = None,
                 override: bool = False, **init_params: Any) -> Any:
        """Bind `name` to `cls` (a class or `"module:Class"`; also accepted by Lightning's keyword, `strategy=` or
        `accelerator=`) and `init_params`; returns `cls`. Without `cls`, a decorator that registers the class it
        decorates. A taken name needs `override=True`."""
        if cls is None:
            cls = init_params.pop(self.kind, None)
        if cls is None:
            def decorator(decorated: T) -> T:
                self.register(name, decorated, description, override, **init_params)
                return decorated
            return decorator
        if not isinstance(cls, (type, str)):
            raise TypeError(f"register({name!r}, {cls!r}): pass a class or its 'module:Class' path")
        if name in self and not override:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass override=True to replace it")
        self[name] = Entry(cls, init_params, description or "")
        return cls

    def resolve(self, name: str) -> tuple[type, dict[str, Any]]:
        """The class and (a copy of) the arguments registered as `name`."""
        entry = super().get(name)
        if entry is None:
            raise ValueError(f"{self.kind}={name!r} is not known; accepted: {', '.join(['auto', *self])}")
        return entry.resolve(), dict(entry.kwargs)

    def get(self, name: str, default: Any = None) -> Any:
        """An instance of the class registered as `name`, built with its arguments; `default` when none is
        (a `KeyError` listing the names without a `default`)."""
        if name not in self:
            if default is not None:
                return default
            raise KeyError(f"{self.kind} {name!r} is not registered; registered: {', '.join(self)}")
        cls, kwargs = self.resolve(name)
        return cls(**kwargs)

    def remove(self, name: str) -> None:
        self.pop(name)

    def __str__(self) -> str:
        return f"Registered {self.kind}s: {', '.join(self)}"

