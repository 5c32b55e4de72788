"""The benchmark config: a YAML file checked into typed entries, with one-line errors naming the line.

Example (``benchmarks/configs/tiny.yaml`` is a complete one)::

    protocol: {profile: gap_diff, num_images: 4}
    model: models/sd-2-1-base
    identities: [data/faces]            # folders with set_A/set_B/set_C, or folders of such folders
    defenders: [none, {name: aspl, options: {steps: 50}}, {name: metacloak, precomputed: published/}]
    protected_share: [1.0, 0.5]
    purifiers: [none, jpeg, [jpeg, {name: gaussian_blur, options: {sigma: 1.0}}]]
    attacks: [{personalizer: dreambooth}, {editor: instruct_pix2pix, instructions: ["make it a painting"]}]
    metrics: [ism, fdfr, brisque, psnr]
    seeds: [0, 1]
"""

from __future__ import annotations

import difflib
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from facedefense.benchmark.protocols import FIELDS, PROFILES, REFERENCE_SETS, Protocol, make_protocol
from facedefense.config import MAX_SEED
from facedefense.errors import ConfigError, FaceDefenseError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TOP_KEYS = (
    "protocol", "model", "device", "identities", "defenders", "protected_share", "purifiers",
    "attacks", "metrics", "seeds", "resources", "examples",
)
NONE = "none"
#: Largest config file read, in bytes (a config is a page of text).
MAX_CONFIG_BYTES = 1_000_000
#: Most values a config may hold once its YAML aliases are expanded: ``*name`` repeats what
#: ``&name`` holds, so nested aliases multiply (a 1 KB "billion laughs" file expands to 9^9 values).
MAX_CONFIG_VALUES = 100_000
#: Longest label or identity name: labels name the example images' files (``examples/<cell>.png``).
MAX_LABEL = 100
#: Upper bounds of the grid's sizes (a typo must not ask for a million images or a 65536-pixel model).
LIMITS = {
    "resolution": 4096, "num_images": 10_000, "inference_steps": 10_000, "dreambooth_steps": 1_000_000,
    "num_class_images": 100_000, "examples": 100, "cpus_per_stage": 1024,
}


# -- YAML with line numbers --------------------------------------------------------------------


class LinedDict(dict):
    """A YAML mapping that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class LinedList(list):
    """A YAML sequence that remembers the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]


def _loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_document(self, node: Any) -> Any:
            _expansion(node, {}, set())  # before anything is built from it
            return super().construct_document(node)

    def mapping(loader: Any, node: Any) -> LinedDict:
        loader.flatten_mapping(node)
        result = LinedDict()
        result.line, result.key_lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (dict, list)):
                raise ConfigError(f"line {key_node.start_mark.line + 1}: a key is a name, not a {'mapping' if isinstance(key, dict) else 'list'}")
            if key in result:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice")
            result[key] = loader.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def sequence(loader: Any, node: Any) -> LinedList:
        result = LinedList(loader.construct_object(child, deep=True) for child in node.value)
        result.line, result.item_lines = node.start_mark.line + 1, [child.start_mark.line + 1 for child in node.value]
        return result

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, sequence)
    return Loader


def _expansion(node: Any, sizes: dict[int, int], active: set[int]) -> int:
    """How many values ``node`` holds with its aliases expanded (each shared node counted once per
    use, computed once); raises at the first node past `MAX_CONFIG_VALUES` or that holds itself."""
    import yaml

    if id(node) in sizes:
        return sizes[id(node)]
    line = node.start_mark.line + 1
    if id(node) in active:
        raise ConfigError(f"line {line}: an alias (*name) here refers to a value that holds it (a loop)")
    active.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
        if "\0" in str(node.value):
            raise ConfigError(f"line {line}: a NUL character in {_shown(node.value)}; no file name, label or option holds one")
    total = 1
    for child in children:
        total += _expansion(child, sizes, active)
        if total > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"line {line}: aliases (*name) here expand the config to more than {MAX_CONFIG_VALUES:,} values; "
                "a benchmark config needs far fewer"
            )
    active.discard(id(node))
    sizes[id(node)] = total
    return total


def read_config_text(path: Path) -> str:
    """The config file as text: at most `MAX_CONFIG_BYTES`, UTF-8, no NUL character.

    Raises:
        ConfigError: ``file:line: message`` (the line of the first bad byte).
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read benchmark config {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes; a benchmark config is a short YAML text")
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise ConfigError(f"{path}:{line}: holds a NUL byte; a benchmark config is YAML text (is this a binary file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the config as UTF-8") from None


class _Where:
    """Formats ``file:line: message`` errors."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, line: int, message: str) -> ConfigError:
        """``file:line: message`` on one line (control characters a value brought in are escaped)."""
        shown = "".join(repr(c)[1:-1] if unicodedata.category(c).startswith("C") else c for c in message)
        return ConfigError(f"{self.path}:{line}: {shown}")

    def check_keys(self, mapping: LinedDict, allowed: Sequence[str], what: str) -> None:
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.5)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise self.error(mapping.key_lines[key], f"unknown key '{key}' in {what}{hint}; valid keys: {', '.join(allowed)}")


def _line(container: Any, index: Any, default: int = 1) -> int:
    if isinstance(container, LinedDict):
        return container.key_lines.get(index, container.line)
    if isinstance(container, LinedList) and isinstance(index, int) and index < len(container.item_lines):
        return container.item_lines[index]
    return getattr(container, "line", default)


def _items(value: Any) -> list[Any]:
    """A scalar or a mapping as a one-item list; a list as itself."""
    return list(value) if isinstance(value, list) else [value]


# -- typed entries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodEntry:
    """One method of the grid: registry kind and name, the options the config gave, and a label."""

    kind: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    line: int = 0


@dataclass(frozen=True)
class DefenderEntry:
    """A defender: a registered method, ``none`` (clean photos), or images made elsewhere (``precomputed``)."""

    label: str
    method: MethodEntry | None = None
    precomputed: Path | None = None
    line: int = 0


@dataclass(frozen=True)
class PurifierChain:
    """Purifiers applied in order; an empty chain is ``none``."""

    label: str
    steps: tuple[MethodEntry, ...] = ()


@dataclass(frozen=True)
class AttackEntry:
    """A personalizer (trained on the purified photos, then prompted) or an editor (given instructions)."""

    label: str
    method: MethodEntry
    prompts: tuple[str, ...] = ()
    num_images: int | None = None


@dataclass(frozen=True)
class Identity:
    """One person: the photos to protect (set_B) and the clean sets beside them."""

    name: str
    folder: Path
    sets: dict[str, tuple[Path, ...]]

    @property
    def set_b(self) -> tuple[Path, ...]:
        return self.sets["set_B"]


@dataclass(frozen=True)
class BenchmarkConfig:
    """A checked benchmark config (see the module docstring)."""

    path: Path
    protocol: Protocol
    identities: tuple[Identity, ...]
    defenders: tuple[DefenderEntry, ...]
    shares: tuple[float, ...]
    purifiers: tuple[PurifierChain, ...]
    attacks: tuple[AttackEntry, ...]
    metrics: tuple[MethodEntry, ...]
    seeds: tuple[int, ...]
    model: str | None = None
    device: str | None = None
    gpus_per_stage: float = 1.0
    cpus_per_stage: int | None = None
    examples: int = 2
    protocol_overrides: dict[str, Any] = field(default_factory=dict)
    sources: tuple[Path, ...] = ()
    """Every file and folder the config names (itself, identity and precomputed folders, a local
    model): the inputs no output may be, lie in or hold."""


# -- parsing -----------------------------------------------------------------------------------


def load_config(path: str | Path) -> BenchmarkConfig:
    """Read and check a benchmark config.

    Raises:
        ConfigError: ``file:line: message`` for the first problem (a file that is not UTF-8 YAML
            text or whose aliases expand past `MAX_CONFIG_VALUES`, unknown key with the closest
            suggestion, unknown method with the registry's suggestions, identity folder without
            set_B, precomputed images whose names do not match set_B, a missing local model, a
            label that cannot name a file, a size past `LIMITS`, ...).
    """
    import yaml

    path = Path(path)
    text = read_config_text(path)
    try:
        raw = yaml.load(text, Loader=_loader())  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise ConfigError(f"{path}:{line}: not valid YAML: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:  # a control character
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or " ")
        raise ConfigError(f"{path}:{line}: not valid YAML: control character U+{code:04X} is not allowed") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}:1: not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a benchmark config: lists or mappings nested too deeply") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}:{str(exc).removeprefix('line ')}") from None
    where = _Where(path)
    if not isinstance(raw, LinedDict):
        raise where.error(1, "a benchmark config is a mapping (protocol:, identities:, defenders:, ...)")
    where.check_keys(raw, TOP_KEYS, "the config")
    for required in ("identities", "defenders", "attacks", "metrics"):
        if required not in raw:
            raise where.error(raw.line, f"missing '{required}:'")
    base = path.parent
    protocol, overrides = _protocol(where, raw)
    model = _text(where, raw, "model") if "model" in raw else None
    if model and (model.startswith((".", "/", "~")) or (base / model).exists()):
        model = str((base / model).expanduser().resolve())
        _check_paths(where, _line(raw, "model"), {"model": model})
    resources = raw.get("resources", LinedDict())
    if not isinstance(resources, LinedDict):
        raise where.error(_line(raw, "resources"), "resources: is a mapping (gpus_per_stage: 1)")
    where.check_keys(resources, ("gpus_per_stage", "cpus_per_stage"), "resources")
    identities = _identities(where, raw, base)
    config = BenchmarkConfig(
        path=path,
        protocol=protocol,
        identities=identities,
        defenders=_defenders(where, raw, base, identities),
        shares=_shares(where, raw),
        purifiers=_purifiers(where, raw),
        attacks=_attacks(where, raw, protocol),
        metrics=tuple(_method(where, "metric", item, raw["metrics"], i) for i, item in enumerate(_items(raw["metrics"]))),
        seeds=_seeds(where, raw),
        model=model,
        device=_text(where, raw, "device") if "device" in raw else None,
        gpus_per_stage=_number(where, resources, "gpus_per_stage", 1.0),
        cpus_per_stage=_integer(where, resources, "cpus_per_stage", 0) or None,
        examples=_integer(where, raw, "examples", 2),
        protocol_overrides=overrides,
    )
    config = replace(config, sources=_sources(config, raw, base))
    _check_labels(where, config, raw)
    if any(_is_set_metric(entry) for entry in config.metrics):
        for identity in config.identities:
            if not identity.sets.get(protocol.reference_set):
                raise where.error(
                    _line(raw, "identities"),
                    f"identity '{identity.name}' has no {protocol.reference_set} (the protocol's reference_set for set metrics such as ISM)",
                )
    return config


def _text(where: _Where, mapping: LinedDict, key: str) -> str:
    value = mapping[key]
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise where.error(_line(mapping, key), f"'{key}' must be a text value, got {type(value).__name__}")
    return str(value)


def _number(where: _Where, mapping: LinedDict, key: str, default: float) -> float:
    if key not in mapping:
        return default
    value = mapping[key]
    try:
        from facedefense.budget import parse_fraction

        number = parse_fraction(value, key) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError, FaceDefenseError):
        raise where.error(_line(mapping, key), f"'{key}' must be a number, got {_shown(value)}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise where.error(_line(mapping, key), f"'{key}' must be a non-negative number, got {_shown(value)}")
    return number


def _integer(where: _Where, mapping: LinedDict, key: str, default: int) -> int:
    """A non-negative integer up to its `LIMITS` entry."""
    number = float(_number(where, mapping, key, default))
    if not number.is_integer() or number > LIMITS.get(key, math.inf):
        raise where.error(_line(mapping, key), f"'{key}' must be an integer from 0 to {LIMITS.get(key, 'any')}, got {_shown(mapping[key])}")
    return int(number)


def _shown(value: Any, width: int = 40) -> str:
    """A value for a one-line message: its repr, control characters escaped, shortened."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def check_name(text: Any, what: str) -> str:
    """A label or identity name, which becomes part of a file name: non-empty text of at most
    `MAX_LABEL` characters, without path separators, control or invisible formatting characters.

    Raises:
        ConfigError: one line naming the problem (without the file:line, which callers add).
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{what} must be a non-empty text, got {_shown(text)}")
    if len(text) > MAX_LABEL:
        raise ConfigError(f"{what} {_shown(text)} is {len(text)} characters long; at most {MAX_LABEL}")
    bad = next((c for c in text if c in "/\\" or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
    if bad is not None:
        kind = "a path separator" if bad in "/\\" else f"the control character {bad!r}"
        raise ConfigError(f"{what} {_shown(text)} holds {kind}; labels name files: use letters, digits, '-', '_', '+', '.'")
    if text in (".", ".."):
        raise ConfigError(f"{what} {text!r} is not a usable name")
    return text


def _check_paths(where: _Where, line: int, options: dict[str, Any]) -> None:
    """A missing local model folder or checkpoint, reported at its line before any work."""
    from facedefense.config import check_method_paths

    try:
        check_method_paths(options)
    except FaceDefenseError as exc:
        raise where.error(line, str(exc).splitlines()[0]) from None


def _protocol(where: _Where, raw: LinedDict) -> tuple[Protocol, dict[str, Any]]:
    value = raw.get("protocol", "facedefense")
    line = _line(raw, "protocol")
    if isinstance(value, str):
        value_map = LinedDict(profile=value)
        value_map.line, value_map.key_lines = line, {"profile": line}
        value = value_map
    if not isinstance(value, LinedDict):
        raise where.error(line, "protocol: is a profile name or a mapping {profile: NAME, FIELD: VALUE, ...}")
    where.check_keys(value, ("profile", *FIELDS), "protocol")
    profile = str(value.get("profile", "facedefense"))
    if profile not in PROFILES:
        close = difflib.get_close_matches(profile, list(PROFILES), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise where.error(_line(value, "profile"), f"unknown protocol profile '{profile}'{hint}; profiles: {', '.join(PROFILES)}")
    overrides: dict[str, Any] = {}
    for key, given in value.items():
        if key == "profile":
            continue
        line = _line(value, key)
        default = PROFILES[profile][key]
        if key == "eps":
            from facedefense.budget import parse_budget

            try:
                overrides[key] = parse_budget(given)
            except FaceDefenseError as exc:
                raise where.error(line, f"protocol eps: {exc}") from None
        elif key in ("prompts", "instructions"):
            prompts = _items(given)
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise where.error(line, f"protocol {key}: a list of non-empty texts")
            overrides[key] = tuple(prompts)
        elif key == "reference_set":
            if given not in REFERENCE_SETS:
                raise where.error(line, f"protocol reference_set must be one of {', '.join(REFERENCE_SETS)}, got {given!r}")
            overrides[key] = given
        elif isinstance(default, bool) or not isinstance(default, (int, float)):
            overrides[key] = str(given)
        else:
            try:
                number = float(given) if not isinstance(given, bool) else math.nan
            except (TypeError, ValueError):
                number = math.nan
            limit = LIMITS.get(key, math.inf)
            if not math.isfinite(number) or not 0 <= number <= limit or (isinstance(default, int) and not number.is_integer()):
                kind = "integer" if isinstance(default, int) else "number"
                bound = f" up to {limit:,}" if math.isfinite(limit) else ""
                raise where.error(line, f"protocol {key} must be a non-negative {kind}{bound}, got {_shown(given)}")
            overrides[key] = type(default)(number)
    return make_protocol(profile, overrides), overrides


def _method(where: _Where, kind: str, item: Any, container: Any, index: int, extra: Sequence[str] = ()) -> MethodEntry:
    """``name`` or ``{name: NAME, options: {...}, label: ...}``; the name is looked up in the registry.
    Option values starting with ``./`` or ``../`` are paths relative to the config file."""
    from facedefense.registry import get_registry

    line = _line(container, index)
    if isinstance(item, str):
        name, options, label = item, {}, item
    elif isinstance(item, LinedDict):
        where.check_keys(item, ("name", "options", "label", *extra), f"a {kind} entry")
        if "name" not in item:
            raise where.error(item.line, f"a {kind} entry needs 'name:'")
        name, label = str(item["name"]), item.get("label", item["name"])
        options = item.get("options", {}) or {}
        if not isinstance(options, dict):
            raise where.error(_line(item, "options"), f"{kind} '{name}': options: is a mapping of option: value")
        line = item.line
    else:
        raise where.error(line, f"a {kind} is a name or a mapping with 'name:', got {_shown(item)}")
    try:
        check_name(name, f"{kind} name")
        label = check_name(label if isinstance(label, str) else str(label), f"{kind} label")
    except ConfigError as exc:
        raise where.error(_line(item, "label", line) if isinstance(item, LinedDict) else line, str(exc)) from None
    registry = get_registry()
    try:
        spec = registry.get(kind, name)
        cls = spec.load()
    except FaceDefenseError as exc:
        for other in ("defender", "purifier", "personalizer", "editor", "metric"):
            if other != kind and name in registry.names(other):
                raise where.error(line, f"'{name}' is a {other}, not a {kind} (see `facedefense list {other}s`)") from None
        raise where.error(line, str(exc).splitlines()[0]) from None
    from facedefense.config import config_fields

    fields = config_fields(cls.Config)
    for key in options:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise where.error(_line(options, key, line), f"{kind} '{name}' has no option '{key}'{hint}")
    values = {str(k): _plain(v) for k, v in options.items()}
    values = {k: str((where.path.parent / v).resolve()) if isinstance(v, str) and v.startswith(("./", "../")) else v for k, v in values.items()}
    return MethodEntry(kind, spec.name, values, label, line)


def _plain(value: Any) -> Any:
    """Plain dicts and lists (the line-aware ones stay in the parser)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _identities(where: _Where, raw: LinedDict, base: Path) -> tuple[Identity, ...]:
    container = raw["identities"]
    found: list[Identity] = []
    for index, item in enumerate(_items(container)):
        line = _line(container, index) if isinstance(container, LinedList) else _line(raw, "identities")
        if not isinstance(item, str):
            raise where.error(line, "identities: folders (each with set_A/set_B/set_C, or holding such folders)")
        folder = (base / item).expanduser()
        if not folder.is_dir():
            raise where.error(line, f"identity folder {folder} does not exist")
        if _is_identity(folder):
            candidates = [folder]
        else:
            candidates = sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))
            if not candidates:
                raise where.error(line, f"{folder} holds neither set_A/set_B/set_C nor identity folders")
        for candidate in candidates:
            sets = {
                name: tuple(sorted(p for p in (candidate / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
                for name in REFERENCE_SETS
                if (candidate / name).is_dir()
            }
            if not sets.get("set_B"):
                raise where.error(line, f"identity folder {candidate} has no set_B (the photos to protect)")
            try:
                check_name(candidate.name, "identity folder name")
            except ConfigError as exc:
                raise where.error(line, f"{exc} ({candidate.parent})") from None
            found.append(Identity(candidate.name, candidate.resolve(), sets))
    names = [identity.name for identity in found]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise where.error(_line(raw, "identities"), f"two identities are named '{duplicate}'")
    return tuple(found)


def _is_identity(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in REFERENCE_SETS)


def _defenders(where: _Where, raw: LinedDict, base: Path, identities: Sequence[Identity]) -> tuple[DefenderEntry, ...]:
    container = raw["defenders"]
    entries: list[DefenderEntry] = []
    for index, item in enumerate(_items(container)):
        line = _line(container, index)
        if item == NONE:
            entries.append(DefenderEntry(NONE, line=line))
            continue
        if isinstance(item, LinedDict) and "precomputed" in item:
            where.check_keys(item, ("name", "label", "precomputed"), "a precomputed defender")
            label = str(item.get("label", item.get("name", Path(str(item["precomputed"])).name)))
            try:
                check_name(label, "defender label")
            except ConfigError as exc:
                raise where.error(item.line, str(exc)) from None
            folder = (base / str(item["precomputed"])).expanduser().resolve()
            _check_precomputed(where, _line(item, "precomputed"), folder, identities)
            entries.append(DefenderEntry(label, precomputed=folder, line=item.line))
            continue
        method = _method(where, "defender", item, container, index)
        entries.append(DefenderEntry(method.label, method=method, line=method.line))
    return tuple(entries)


def _check_precomputed(where: _Where, line: int, folder: Path, identities: Sequence[Identity]) -> None:
    """Protections made elsewhere: ``folder/<identity>/`` holds one image per set_B photo, same stems."""
    if not folder.is_dir():
        raise where.error(line, f"precomputed folder {folder} does not exist")
    for identity in identities:
        sub = folder / identity.name
        if not sub.is_dir():
            single = len(identities) == 1 and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
            if not single:
                raise where.error(line, f"precomputed folder {folder} has no subfolder '{identity.name}'")
            sub = folder
        have = {p.stem for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        want = {p.stem for p in identity.set_b}
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            detail = "; ".join(
                part for part in (f"missing {', '.join(missing)}" if missing else "", f"unexpected {', '.join(extra)}" if extra else "") if part
            )
            raise where.error(line, f"precomputed images in {sub} do not match {identity.name}/set_B by name: {detail}")


def precomputed_files(folder: Path, identity: Identity) -> list[Path]:
    """The precomputed image for each set_B photo of ``identity`` (same order)."""
    sub = folder / identity.name if (folder / identity.name).is_dir() else folder
    by_stem = {p.stem: p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    return [by_stem[p.stem] for p in identity.set_b]


def _shares(where: _Where, raw: LinedDict) -> tuple[float, ...]:
    value = raw.get("protected_share", 1.0)
    shares = []
    for index, item in enumerate(_items(value)):
        try:
            share = float(item) if not isinstance(item, bool) else math.nan
        except (TypeError, ValueError):
            share = math.nan
        if not 0 < share <= 1:
            raise where.error(_line(value, index, _line(raw, "protected_share")), f"protected_share must be in (0, 1], got {item!r}")
        shares.append(share)
    return tuple(dict.fromkeys(shares))


def _purifiers(where: _Where, raw: LinedDict) -> tuple[PurifierChain, ...]:
    container = raw.get("purifiers", [NONE])
    chains: list[PurifierChain] = []
    for index, item in enumerate(_items(container)):
        if item == NONE or item == [NONE]:
            chains.append(PurifierChain(NONE))
            continue
        steps = tuple(_method(where, "purifier", step, item if isinstance(item, list) else container, i if isinstance(item, list) else index)
                      for i, step in enumerate(_items(item)))
        chains.append(PurifierChain("+".join(step.label for step in steps), steps))
    return tuple(chains)


def _attacks(where: _Where, raw: LinedDict, protocol: Protocol) -> tuple[AttackEntry, ...]:
    container = raw["attacks"]
    attacks: list[AttackEntry] = []
    for index, item in enumerate(_items(container)):
        line = _line(container, index)
        if not isinstance(item, LinedDict) or ("personalizer" in item) == ("editor" in item):
            raise where.error(line, "an attack is {personalizer: NAME, ...} or {editor: NAME, instructions: [...]}")
        kind = "personalizer" if "personalizer" in item else "editor"
        allowed = (kind, "options", "label", "prompts", "num_images") if kind == "personalizer" else (kind, "options", "label", "instructions")
        where.check_keys(item, allowed, f"a {kind} attack")
        entry = LinedDict(name=item[kind], **{k: v for k, v in item.items() if k in ("options", "label")})
        entry.line, entry.key_lines = item.line, dict(item.key_lines)
        method = _method(where, kind, entry, container, index)
        key = "prompts" if kind == "personalizer" else "instructions"
        prompts: tuple[str, ...] = ()
        if key in item:
            prompts = tuple(_items(item[key]))
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise where.error(_line(item, key), f"{key}: a list of non-empty texts")
        elif kind == "editor":
            prompts = protocol.instructions
            if not prompts:
                raise where.error(item.line, f"editor '{method.name}' needs instructions: [...] (or a protocol that "
                                  "has them: profile facelock)")
        num_images = _integer(where, item, "num_images", 0) or None
        attacks.append(AttackEntry(method.label, method, prompts, num_images))
    return tuple(attacks)


def _seeds(where: _Where, raw: LinedDict) -> tuple[int, ...]:
    value = raw.get("seeds", [0])
    seeds = []
    for index, item in enumerate(_items(value)):
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= MAX_SEED:
            raise where.error(_line(value, index, _line(raw, "seeds")), f"seeds are integers from 0 to {MAX_SEED}, got {_shown(item)}")
        seeds.append(item)
    return tuple(dict.fromkeys(seeds))


def _check_labels(where: _Where, config: BenchmarkConfig, raw: LinedDict) -> None:
    for what, labels in (
        ("defenders", [d.label for d in config.defenders]),
        ("purifiers", [p.label for p in config.purifiers]),
        ("attacks", [a.label for a in config.attacks]),
        ("metrics", [m.label for m in config.metrics]),
    ):
        duplicate = next((label for label in labels if labels.count(label) > 1), None)
        if duplicate:
            raise where.error(_line(raw, what), f"two {what} are labelled '{duplicate}'; give one a distinct 'label:'")


def _sources(config: BenchmarkConfig, raw: LinedDict, base: Path) -> tuple[Path, ...]:
    """The config file, the identity folders as given and found, precomputed folders, a local model."""
    given = [(base / item).expanduser() for item in _items(raw["identities"]) if isinstance(item, str)]
    found = [
        config.path, *given, *(identity.folder for identity in config.identities),
        *(entry.precomputed for entry in config.defenders if entry.precomputed is not None),
    ]
    if config.model and Path(config.model).exists():
        found.append(Path(config.model))
    return tuple(dict.fromkeys(found))


def _is_set_metric(entry: MethodEntry) -> bool:
    from facedefense.registry import get_registry

    return getattr(get_registry().load("metric", entry.name), "pairing", "none") == "set"
