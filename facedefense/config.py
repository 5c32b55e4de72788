"""Method configurations: small dataclasses, set from Python or from ``-o key=value`` on the CLI.

Each method has a nested ``Config`` dataclass. Unknown keys and values of the wrong type raise a
:class:`~facedefense.errors.ConfigError` that names the method, the key and the accepted values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from facedefense.budget import parse_budget, parse_fraction
from facedefense.errors import ConfigError

#: Largest seed accepted (``torch.Generator.manual_seed`` takes 64-bit values).
MAX_SEED = 2**63 - 1


@dataclass
class MethodConfig:
    """Options every method has.

    A config is validated when built (``__post_init__`` raises :class:`ConfigError`) and frozen once
    its method owns it: assigning a field then raises. Derive a changed copy with :meth:`replace`,
    which validates again.

    Attributes:
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        dtype: model precision: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``. Images
            stay float32 in [0, 1] whatever the model precision.
        seed: seed of the method's random generator (random starts, timesteps, noise), 0 to 2**63-1.
    """

    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise ConfigError(
                f"{type(self).__name__} is frozen; build a changed copy with config.replace({name}=...)"
            )
        object.__setattr__(self, name, value)

    def freeze(self) -> MethodConfig:
        """Make this config immutable (done by :class:`~facedefense.Method`); returns it."""
        self.__dict__["_frozen"] = True
        return self

    def replace(self, **changes: Any) -> MethodConfig:
        """A validated, frozen copy with ``changes`` applied (values coerced like ``-o key=value``)."""
        options = {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **changes}
        return build_config(type(self), options, method=type(self).__name__).freeze()


def config_fields(config_class: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a config dataclass."""
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        problems = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except (ValueError, TypeError, ConfigError) as exc:
                problems.append(str(exc))
        raise ConfigError(problems[0] if len(problems) == 1 else f"option '{key}': cannot interpret {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"option '{key}' must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        (item_type, *_) = typing.get_args(annotation) or (str,)
        return origin(_coerce(item.strip() if isinstance(item, str) else item, item_type, key) for item in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"option '{key}' must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"option '{key}' must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"option '{key}' must be an integer, got {value!r}") from exc
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"option '{key}' must be a number, got {value!r}")
        if isinstance(value, str):
            return parse_fraction(value, key)
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"option '{key}' must be a number, got {value!r}") from exc
    if annotation is str:
        return str(value)
    return value


def build_config(config_class: type, options: dict[str, Any], *, method: str = "method") -> Any:
    """Build ``config_class`` from ``options``, coercing strings (``"8/255"``, ``"true"``, ``"5"``).

    Raises:
        ConfigError: an unknown key (with the list of valid ones) or a bad value.
    """
    fields = config_fields(config_class)
    unknown = sorted(set(options) - set(fields))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(fields), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{method} has no option {', '.join(repr(k) for k in unknown)}{hint}; valid options: {', '.join(fields)}"
        )
    values = {key: _coerce(value, fields[key], key) for key, value in options.items()}
    if "eps" in values and values["eps"] is not None:
        values["eps"] = parse_budget(values["eps"])
    seed = values.get("seed", 0)
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    try:
        return config_class(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{method}: {exc}") from exc


def parse_option_pairs(pairs: list[str] | None) -> dict[str, str]:
    """Parse CLI ``-o key=value`` pairs into a dict (values stay strings until coerced)."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad option '{pair}': use -o key=value")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)
