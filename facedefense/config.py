"""Method configurations: small dataclasses, set from Python or from ``-o key=value`` on the CLI.

Each method has a nested ``Config`` dataclass. Unknown keys and values of the wrong type raise a
[`ConfigError`][facedefense.errors.ConfigError] that names the method, the key and the accepted values.
Numeric ranges are declared on the field with [`option`][facedefense.config.option] (one line each)
and checked whenever a config is built::

    @dataclass
    class TextureConfig(DefenderConfig):
        cell: int = option(1, min=1, max=256)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from facedefense.budget import parse_budget, parse_fraction
from facedefense.errors import ConfigError

#: Largest seed accepted (``torch.Generator.manual_seed`` takes 64-bit values).
MAX_SEED = 2**63 - 1

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, *, min: float | None = None, max: float | None = None,
           default_factory: Any = _MISSING) -> Any:  # fmt: skip
    """A config field with a declared range: ``steps: int = option(100, min=1, max=10_000)``.

    The range is inclusive and checked whenever the config is built
    ([`build_config`][facedefense.config.build_config], so by every method's constructor,
    ``facedefense.create`` and ``-o key=value``); a value outside it raises a
    [`ConfigError`][facedefense.errors.ConfigError] naming the option and the range. ``None`` values are not
    checked (for ``X | None`` options). ``facedefense info`` shows the range.
    """
    metadata = {"min": min, "max": max}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_range(field: dataclasses.Field) -> tuple[float | None, float | None]:
    """The (min, max) a field declares through [`option`][facedefense.config.option] (None where
    unbounded)."""
    return field.metadata.get("min"), field.metadata.get("max")


def check_ranges(config: Any, *, method: str = "method") -> None:
    """Check every field declared with [`option`][facedefense.config.option] against its range.

    Raises:
        ConfigError: ``{method}: option 'cell' must be at most 256, got 100000``.
    """
    for field in dataclasses.fields(config):
        low, high = option_range(field)
        value = getattr(config, field.name)
        if value is None or (low is None and high is None) or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)):
            continue
        if low is not None and high is not None and not low <= value <= high:
            raise ConfigError(f"{method}: option '{field.name}' must be from {_number(low)} to {_number(high)}, got {value}")
        if low is not None and value < low:
            raise ConfigError(f"{method}: option '{field.name}' must be at least {_number(low)}, got {value}")
        if high is not None and value > high:
            raise ConfigError(f"{method}: option '{field.name}' must be at most {_number(high)}, got {value}")


def _number(value: float) -> str:
    return format_value(value)


def format_value(value: Any) -> str:
    """A default as a person would type it: ``8/255`` for 0.0313..., ``'noise'``, ``None``, ``1e-05``."""
    if isinstance(value, float) and 0 < abs(value) < 1 and len(repr(value)) > 7:
        levels = value * 255
        if abs(levels - round(levels)) < 1e-9:
            return f"{round(levels)}/255"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def option_docs(config_class: type) -> dict[str, str]:
    """Option name -> description, parsed from the ``Attributes:`` sections of the docstrings of
    ``config_class`` and its bases (the class's own text wins), one line each.

    One entry per option, Google style: ``name: text`` or ``name (type): text``, continued on
    deeper-indented lines. A grouped entry ``a, b: text`` gives both options the text. Text after
    the entry's name is never split, so ``steps: 100. learning_rate: 1e-4`` describes ``steps``
    only: write each option as its own entry.
    """
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        docs.update(docstring_section(klass.__dict__.get("__doc__") or "", "Attributes"))
    return docs


def docstring_section(docstring: str, title: str) -> dict[str, str]:
    """Entry name -> text (one line) of the Google-style section ``title`` (``Attributes``,
    ``Args``) of ``docstring``; an entry ``a, b: text`` gives each name the text."""
    import inspect
    import re

    found: dict[str, str] = {}
    inside, indent, current = False, None, []
    for line in inspect.cleandoc(docstring).splitlines():
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if width == 0:  # a section title or the summary: this section ends (or starts)
            inside, indent, current = line.strip() == f"{title}:", None, []
            continue
        if not inside:
            continue
        entry = re.match(r"^(\w+(?:\s*,\s*\w+)*)(?:\s*\([^)]*\))?:(?:\s+(.*))?$", line.strip())
        if entry and (indent is None or width == indent):
            indent = width
            current = [name.strip() for name in entry.group(1).split(",")]
            for name in current:
                found[name] = (entry.group(2) or "").strip()
        elif width > (indent or 0):
            for name in current:
                found[name] = f"{found[name]} {line.strip()}".strip()
    return found


@dataclass
class MethodConfig:
    """Options every method has.

    A config is validated when built (``__post_init__`` raises
    [`ConfigError`][facedefense.errors.ConfigError]) and frozen once its method owns it: assigning a field
    then raises. Derive a changed copy with [`replace`][facedefense.config.MethodConfig.replace], which
    validates again.

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
        """Make this config immutable (done by [`Method`][facedefense.interfaces.base.Method]); returns it."""
        self.__dict__["_frozen"] = True
        return self

    def replace(self, **changes: Any) -> MethodConfig:
        """A validated, frozen copy with ``changes`` applied (values coerced like ``-o key=value``)."""
        options = {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **changes}
        return build_config(type(self), options, method=type(self).__name__).freeze()


def describe_type(annotation: Any) -> str:
    """A field's type for people: ``int``, ``'noise' | 'checker'``, ``float | None``, ``tuple[int, ...]``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(choice) for choice in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join("None" if arg is type(None) else describe_type(arg) for arg in typing.get_args(annotation))
    if origin is not None:
        inner = ", ".join("..." if arg is Ellipsis else describe_type(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


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
        config = config_class(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{method}: {exc}") from exc
    check_ranges(config, method=method)
    return config


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


def looks_like_local_path(value: str) -> bool:
    """True for what can only be a local path (``./m``, ``/m``, ``~/m``, ``a/b/c``), not a hub id (``org/name``)."""
    return (
        value.startswith((".", "/", "~", "\\"))
        or value.count("/") > 1
        or os.sep != "/" and os.sep in value
        or value.endswith(("/", ".safetensors", ".pt", ".pth", ".bin", ".ckpt"))
    )


def check_method_paths(options: dict[str, Any]) -> None:
    """Report a missing model folder or checkpoint before importing torch and building the method.

    Raises:
        ModelNotFoundError: ``checkpoint`` is not a file, or ``model`` (or a model of an ensemble
            ``"a,b"``) is a local path that does not exist, or a file.
    """
    from facedefense.errors import ModelNotFoundError

    checkpoint = options.get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint:
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            raise ModelNotFoundError(f"checkpoint {checkpoint} is a folder; give the weights file")
        if not path.is_file():
            raise ModelNotFoundError(f"checkpoint {checkpoint} does not exist")
    model = options.get("model")
    if not isinstance(model, str) or not model:
        return
    # an ensemble (ASPL, FSMG: "a,b") names its models separated by commas
    models = [model] if Path(model).expanduser().exists() else [m.strip() for m in model.split(",") if m.strip()]
    for name in models:
        if not Path(name).expanduser().exists() and looks_like_local_path(name):
            raise ModelNotFoundError(f"model folder {name} does not exist")
        if Path(name).expanduser().is_file():
            raise ModelNotFoundError(f"model {name} is a file; give a diffusers model folder (with model_index.json)")
