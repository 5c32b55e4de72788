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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facedefense.benchmark.protocols import FIELDS, PROFILES, REFERENCE_SETS, Protocol, make_protocol
from facedefense.errors import ConfigError, FaceDefenseError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TOP_KEYS = (
    "protocol", "model", "device", "identities", "defenders", "protected_share", "purifiers",
    "attacks", "metrics", "seeds", "resources", "examples",
)
NONE = "none"


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
        pass

    def mapping(loader: Any, node: Any) -> LinedDict:
        loader.flatten_mapping(node)
        result = LinedDict()
        result.line, result.key_lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
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


class _Where:
    """Formats ``file:line: message`` errors."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, line: int, message: str) -> ConfigError:
        return ConfigError(f"{self.path}:{line}: {message}")

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


# -- parsing -----------------------------------------------------------------------------------


def load_config(path: str | Path) -> BenchmarkConfig:
    """Read and check a benchmark config.

    Raises:
        ConfigError: ``file:line: message`` for the first problem (unknown key with the closest
            suggestion, unknown method with the registry's suggestions, identity folder without
            set_B, precomputed images whose names do not match set_B, ...).
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read benchmark config {path}: {exc.strerror or exc}") from exc
    try:
        raw = yaml.load(text, Loader=_loader())  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise ConfigError(f"{path}:{line}: not valid YAML: {exc.problem}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}:{str(exc).removeprefix('line ')}") from exc
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
        attacks=_attacks(where, raw),
        metrics=tuple(_method(where, "metric", item, raw["metrics"], i) for i, item in enumerate(_items(raw["metrics"]))),
        seeds=_seeds(where, raw),
        model=model,
        device=_text(where, raw, "device") if "device" in raw else None,
        gpus_per_stage=_number(where, resources, "gpus_per_stage", 1.0),
        cpus_per_stage=int(_number(where, resources, "cpus_per_stage", 0)) or None,
        examples=int(_number(where, raw, "examples", 2)),
        protocol_overrides=overrides,
    )
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
    except (TypeError, ValueError, FaceDefenseError):
        raise where.error(_line(mapping, key), f"'{key}' must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise where.error(_line(mapping, key), f"'{key}' must be a non-negative number, got {value!r}")
    return number


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
        elif key == "prompts":
            prompts = _items(given)
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise where.error(line, "protocol prompts: a list of non-empty prompts")
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
            if not math.isfinite(number) or number < 0 or (isinstance(default, int) and not number.is_integer()):
                raise where.error(line, f"protocol {key} must be a non-negative {'integer' if isinstance(default, int) else 'number'}, got {given!r}")
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
        name, label = str(item["name"]), str(item.get("label", item["name"]))
        options = item.get("options", {}) or {}
        if not isinstance(options, dict):
            raise where.error(_line(item, "options"), f"{kind} '{name}': options: is a mapping of option: value")
        line = item.line
    else:
        raise where.error(line, f"a {kind} is a name or a mapping with 'name:', got {item!r}")
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


def _attacks(where: _Where, raw: LinedDict) -> tuple[AttackEntry, ...]:
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
            raise where.error(item.line, f"editor '{method.name}' needs instructions: [...]")
        num_images = int(_number(where, item, "num_images", 0)) or None
        attacks.append(AttackEntry(method.label, method, prompts, num_images))
    return tuple(attacks)


def _seeds(where: _Where, raw: LinedDict) -> tuple[int, ...]:
    value = raw.get("seeds", [0])
    seeds = []
    for index, item in enumerate(_items(value)):
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise where.error(_line(value, index, _line(raw, "seeds")), f"seeds are non-negative integers, got {item!r}")
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


def _is_set_metric(entry: MethodEntry) -> bool:
    from facedefense.registry import get_registry

    return getattr(get_registry().load("metric", entry.name), "pairing", "none") == "set"
