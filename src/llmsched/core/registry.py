"""Name -> class registries, one per layer, in the manner of scikit-learn estimators.

Every policy class declares its parameters as a pydantic model (`Params`); the constructor only validates and
stores them (`self.params`), so the CLI, YAML scenarios, sweeps and the Bayesian tuner all reach parameters
the same way (`get_params` / `set_params`). Learned state lives in attributes ending with `_`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from llmsched.core.names import format_validation, unknown


class Params(BaseModel):
    """Base of every policy's parameter model: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Configurable:
    """Mixin giving a policy validated parameters and the sklearn-style get/set verbs."""

    Params: ClassVar[type[Params]] = Params
    name: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        try:
            self.params = self.Params(**params)
        except ValidationError as e:
            raise ValueError(f"invalid parameters for {self.name or type(self).__name__}: "
                             f"{format_validation(e, self.Params)}") from None

    def get_params(self) -> dict[str, Any]:
        return self.params.model_dump()

    def set_params(self, **params: Any) -> None:
        """Change parameters on a live object (the tuner does this between trials)."""
        merged = {**self.get_params(), **params}
        try:
            self.params = self.Params(**merged)
        except ValidationError as e:
            raise ValueError(f"invalid parameters for {self.name}: "
                             f"{format_validation(e, self.Params)}") from None


T = TypeVar("T", bound=Configurable)


class Registry(Generic[T]):
    """Maps policy names to classes for one layer."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.layer} policy {name!r} registered twice")
            cls.name = name
            self._classes[name] = cls
            return cls

        return deco

    def get(self, name: str) -> type[T]:
        try:
            return self._classes[name]
        except KeyError:
            raise ValueError(unknown(f"{self.layer} policy", name, self._classes)) from None

    def create(self, name: str, params: Mapping[str, Any] | None = None) -> T:
        return self.get(name)(**dict(params or {}))

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
