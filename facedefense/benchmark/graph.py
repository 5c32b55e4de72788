"""The grid as a graph of stages: protect -> purify -> (train -> generate | edit) -> score.

A stage is identified by a key hashed from everything that determines its output: the method's
fingerprint (name, class, plugin, plugin version, configuration), the contents of its input files,
the signature of local model folders its options name, the seed, and the keys of the stages it
reads. Two cells that share a stage (one protection per identity, defender, share and seed serves
every purifier and attack after it) share its key, so it runs once; a changed method version
changes the key, so its stages and everything after them are recomputed, never reused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facedefense.benchmark.config import (
    NONE,
    BenchmarkConfig,
    DefenderEntry,
    Identity,
    MethodEntry,
    PurifierChain,
    precomputed_files,
)
from facedefense.errors import FaceDefenseError

#: Bumped when a stage's on-disk layout changes (every cached stage is then recomputed).
STAGE_FORMAT = 2
KINDS = ("protect", "purify", "train", "generate", "edit", "score")


@dataclass(frozen=True)
class Stage:
    """One unit of work whose output is cached under ``cache/<kind>/<key>/``.

    Attributes:
        kind: one of ``KINDS``.
        key: 20-hex cache key.
        label: human-readable description (progress bar, failures).
        deps: keys of the stages whose outputs it reads.
        spec: what the worker needs (paths, method names and options, prompts), JSON-able.
        gpus: GPUs a Ray task of this stage asks for (0 for file shuffling and light metrics).
        threads: CPU threads the stage uses (``torch.set_num_threads``) and a Ray task asks for;
            None: torch's default in-process, one CPU on Ray. Fixing it makes CPU results identical
            across executors (float sums depend on the thread count).
    """

    kind: str
    key: str
    label: str
    deps: tuple[str, ...]
    spec: dict[str, Any]
    gpus: float = 0.0
    threads: int | None = None


@dataclass
class Cell:
    """One point of the grid and the stages it reads its numbers from."""

    identity: str
    defender: str
    share: float
    purifier: str
    attack: str
    seed: int
    protect: str
    purify: str
    output: str
    train: str | None = None
    scores: dict[str, list[str]] = field(default_factory=dict)  # metric label -> its score stages

    @property
    def name(self) -> str:
        share = "" if self.share in (0.0, 1.0) else f"@{self.share:g}"
        return f"{self.identity}/{self.defender}{share}/{self.purifier}/{self.attack}/seed{self.seed}"

    def facts(self) -> dict[str, Any]:
        return {
            "identity": self.identity, "defender": self.defender, "share": self.share,
            "purifier": self.purifier, "attack": self.attack, "seed": self.seed,
        }


def digest(data: Any, length: int = 20) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:length]


class _Files:
    """Content hashes of input files, computed once per build."""

    def __init__(self) -> None:
        self.hashes: dict[Path, str] = {}

    def sha(self, path: Path) -> str:
        if path not in self.hashes:
            from facedefense.checkpoints import file_sha256

            self.hashes[path] = file_sha256(path)
        return self.hashes[path]

    def shas(self, paths: Any) -> list[str]:
        return [self.sha(Path(p)) for p in paths]


#: Files whose sizes and modification times enter the stage keys when an option names their folder.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".dat", ".pkl", ".npz", ".npy")


def local_signature(value: Any) -> Any:
    """For an option naming a local weights file or a folder holding weights: their names, sizes and
    modification times (a model rebuilt in place at the same path then changes the stage keys).

    Only weight files count: a folder that a method writes into as it runs (a class-image cache)
    must not change the keys of the stages that use it.
    """
    if not isinstance(value, str) or not value or "\n" in value:
        return None
    path = Path(value).expanduser()
    try:
        if path.is_file():
            stat = path.stat()
            return [stat.st_size, stat.st_mtime_ns]
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())[:5000]
            if files:
                return digest([[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    except OSError:
        return None
    return None


class Planner:
    """Resolves each method's options under the protocol and builds the stages of the grid."""

    def __init__(self, config: BenchmarkConfig) -> None:
        from facedefense.registry import get_registry

        self.config = config
        self.registry = get_registry()
        self.files = _Files()
        self.clean_edits: dict[tuple[str, int, str], str] = {}  # (identity, seed, attack) -> its edit stage
        self.stages: dict[str, Stage] = {}
        self.cells: list[Cell] = []
        self.methods: dict[str, dict[str, Any]] = {}

    # -- methods -----------------------------------------------------------------------------

    def resolve(self, entry: MethodEntry, seed: int | None) -> dict[str, Any]:
        """The method's options: protocol and config-wide values where it has such an option,
        then the entry's own options (which win). Returns a JSON-able description with the fingerprint."""
        from facedefense.config import config_fields

        spec = self.registry.get(entry.kind, entry.name)
        cls = spec.load()
        fields = config_fields(cls.Config)
        protocol = self.config.protocol
        derived: dict[str, Any] = {}
        taken: dict[str, str] = {}  # option -> the protocol field it comes from

        def offer(option: str, value: Any, field: str | None = None) -> None:
            if option in fields and value is not None:
                derived[option] = value
                if field is not None:
                    taken[option] = field

        offer("model", self.config.model)
        offer("device", self.config.device)
        if entry.kind in ("defender", "purifier", "personalizer", "editor"):
            offer("seed", seed)
        if entry.kind == "defender":
            offer("eps", protocol.eps, "eps")
            offer("resolution", protocol.resolution, "resolution")
        if entry.kind == "personalizer":
            offer("resolution", protocol.resolution, "resolution")
            offer("instance_prompt", protocol.instance_prompt, "instance_prompt")
            offer("class_prompt", protocol.class_prompt, "class_prompt")
            offer("num_class_images", protocol.num_class_images, "num_class_images")
            if entry.name == "dreambooth":
                offer("steps", protocol.dreambooth_steps, "dreambooth_steps")
        if entry.kind == "metric" and "face" in spec.tags:
            offer("backend", protocol.face_backend, "face_backend")
        if entry.kind == "metric" and entry.name == "lpips":
            offer("net", protocol.lpips_net, "lpips_net")
        options = {**derived, **entry.options}
        fingerprint, resolved = self.fingerprint(entry, spec, cls, options)
        description = {
            "kind": entry.kind, "name": entry.name, "label": entry.label, "options": options, "config": resolved,
            "fingerprint": fingerprint, "plugin": spec.plugin, "plugin_version": spec.version,
            "tags": list(spec.tags),
            "protocol_fields": sorted({field for option, field in taken.items() if option not in entry.options}),
        }
        if entry.kind == "metric":
            description["protected_if"] = cls.protection_direction()
            description["pairing"] = cls.pairing
            description["higher_is_better"] = cls.higher_is_better
            description["edit_reference"] = cls.edit_reference
        self.methods.setdefault(f"{entry.kind}:{entry.label}", description)
        return description

    def fingerprint(self, entry: MethodEntry, spec: Any, cls: type, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """``Method.fingerprint`` of the configured method and its full configuration, without
        building its networks (only the base ``Method.__init__`` runs: config checks, device; and a
        local model folder or checkpoint its options name must exist)."""
        from facedefense.config import check_method_paths, config_to_dict

        try:
            method = cls.configured(plugin=spec.plugin, plugin_version=spec.version, **options)
            check_method_paths(options)
        except FaceDefenseError as exc:
            where = f"{self.config.path}:{entry.line}: " if entry.line else ""
            raise type(exc)(f"{where}{entry.kind} '{entry.label}': {str(exc).splitlines()[0]}") from None
        return method.fingerprint(), config_to_dict(method.config)

    def _method_facts(self, method: dict[str, Any]) -> dict[str, Any]:
        signatures = {k: local_signature(v) for k, v in method["options"].items()}
        return {"fingerprint": method["fingerprint"], "files": {k: v for k, v in signatures.items() if v is not None}}

    def _gpus(self, method: dict[str, Any] | None) -> float:
        return self.config.gpus_per_stage if method is not None else 0.0

    def add(self, kind: str, label: str, facts: dict[str, Any], deps: tuple[str, ...], spec: dict[str, Any], gpus: float) -> str:
        key = digest({"format": STAGE_FORMAT, "kind": kind, "facts": facts, "deps": deps})
        if key not in self.stages:
            self.stages[key] = Stage(kind, key, label, deps, spec, gpus, self.config.cpus_per_stage)
        return key

    # -- the grid ----------------------------------------------------------------------------

    def build(self) -> tuple[list[Stage], list[Cell]]:
        config, protocol = self.config, self.config.protocol
        metrics = [(entry, self.resolve(entry, None)) for entry in config.metrics]
        for identity in config.identities:
            references = [str(p) for p in identity.sets.get(protocol.reference_set, ())]
            for seed in config.seeds:
                for defender in config.defenders:
                    shares = (0.0,) if defender.label == NONE else config.shares
                    for share in shares:
                        protect = self._protect(identity, defender, share, seed)
                        for chain in config.purifiers:
                            purify = self._purify(identity, protect, chain, seed)
                            input_scores = {
                                entry.label: self._score(identity, "input", purify, method, [str(p) for p in identity.set_b], (), seed)
                                for entry, method in metrics
                                if method["pairing"] == "paired"
                            }
                            for attack in config.attacks:
                                train, output, prompts = self._attack(identity, purify, attack, seed)
                                scores = {label: [key] for label, key in input_scores.items()}
                                for entry, method in metrics:
                                    if method["pairing"] != "paired":
                                        scores[entry.label] = [self._score(identity, "generated", output, method, references, prompts, seed)]
                                    elif attack.method.kind == "editor":
                                        scores[entry.label].append(self._edit_score(identity, attack, output, method, prompts, seed))
                                self.cells.append(
                                    Cell(identity.name, defender.label, share, chain.label, attack.label, seed,
                                         protect, purify, output, train, scores)
                                )
        return list(self.stages.values()), self.cells

    def _identity_spec(self, identity: Identity) -> dict[str, Any]:
        return {
            "name": identity.name,
            "set_B": [str(p) for p in identity.set_b],
            "set_A": [str(p) for p in identity.sets.get("set_A", ())],
            "instance_prompt": self.config.protocol.instance_prompt,
            "class_prompt": self.config.protocol.class_prompt,
        }

    def _protect(self, identity: Identity, defender: Any, share: float, seed: int) -> str:
        shown = defender.label + (f"@{share:g}" if share not in (0.0, 1.0) else "")
        spec = {"identity": self._identity_spec(identity), "share": share, "defender": shown}
        facts: dict[str, Any] = {
            "set_B": self.files.shas(identity.set_b), "share": share,
            "prompts": [self.config.protocol.instance_prompt, self.config.protocol.class_prompt],
        }
        method = None
        if defender.precomputed is not None:
            files = [str(p) for p in precomputed_files(defender.precomputed, identity)]
            spec["precomputed"] = files
            facts["precomputed"] = self.files.shas(files)
        elif defender.method is not None:
            method = self.resolve(defender.method, seed)
            spec["method"] = method
            facts["method"] = self._method_facts(method)
            facts["set_A"] = self.files.shas(identity.sets.get("set_A", ()))
        label = f"protect {identity.name} with {shown}"
        return self.add("protect", label, facts, (), spec, self._gpus(method))

    def _purify(self, identity: Identity, protect: str, chain: Any, seed: int) -> str:
        methods = [self.resolve(step, seed) for step in chain.steps]
        facts = {"chain": [self._method_facts(m) for m in methods]}
        label = f"purify {identity.name} ({self.stages[protect].spec['defender']}) with {chain.label}"
        return self.add("purify", label, facts, (protect,), {"chain": methods}, self._gpus(methods[0] if methods else None))

    def _attack(self, identity: Identity, purify: str, attack: Any, seed: int) -> tuple[str | None, str, tuple[str, ...]]:
        protocol = self.config.protocol
        method = self.resolve(attack.method, seed)
        base = self.stages[purify].label.removeprefix("purify ")
        if attack.method.kind == "editor":
            prompts = attack.prompts
            spec = {"method": method, "instructions": list(prompts), "seed": seed}
            facts = {"method": self._method_facts(method), "instructions": list(prompts)}
            return None, self.add("edit", f"edit {base} with {attack.label}", facts, (purify,), spec, self._gpus(method)), prompts
        options = method["options"]
        instance = options.get("instance_prompt", protocol.instance_prompt)
        class_prompt = options.get("class_prompt", protocol.class_prompt)
        spec = {"method": method, "instance_prompt": instance, "class_prompt": class_prompt}
        facts = {"method": self._method_facts(method), "instance_prompt": instance, "class_prompt": class_prompt}
        train = self.add("train", f"train {attack.label} on {base}", facts, (purify,), spec, self._gpus(method))
        prompts = attack.prompts or protocol.prompts
        generation = {
            "prompts": list(prompts), "num_images": attack.num_images or protocol.num_images,
            "steps": protocol.inference_steps, "guidance_scale": protocol.guidance_scale, "seed": seed,
            "device": self.config.device or "auto",
        }
        facts = {key: value for key, value in generation.items() if key != "device"}
        output = self.add("generate", f"generate with {attack.label} of {base}", facts, (train,), generation, self._gpus(method))
        return train, output, prompts

    def _score(self, identity: Identity, target: str, source: str, method: dict[str, Any], references: list[str],
               prompts: tuple[str, ...], seed: int, against: str | None = None) -> str:
        """A score stage of ``source``'s images: against ``references`` (files), or, with ``against``,
        against the images of that stage of the same names."""
        facts = {"metric": self._method_facts(method), "target": target, "references": self.files.shas(references)}
        spec = {"metric": method, "target": target, "references": references}
        heavy = bool({"needs_model", "face"} & set(method["tags"]))
        label = f"score {method['label']} on {self.stages[source].label}"
        deps = (source,) if against is None else (source, against)
        return self.add("score", label, facts, deps, spec, self.config.gpus_per_stage if heavy else 0.0)

    def _edit_score(self, identity: Identity, attack: Any, output: str, method: dict[str, Any], prompts: tuple[str, ...],
                    seed: int) -> str:
        """A paired metric of an editing attack's outputs, as FaceLock's evaluation scores them: each
        edit against the same edit of the clean photo (``edit_reference`` ``clean_edit``: PSNR, SSIM,
        LPIPS) or against its clean source photo (``source``: FR, CLIP-I, CLIP-S)."""
        if method["edit_reference"] == "source":
            return self._score(identity, "output", output, method, [str(p) for p in identity.set_b], prompts, seed)
        key = (identity.name, seed, attack.label)
        if key not in self.clean_edits:  # planned once per identity, seed and attack, not per cell and metric
            clean = self._purify(identity, self._protect(identity, DefenderEntry(NONE), 0.0, seed), PurifierChain(NONE), seed)
            self.clean_edits[key] = self._attack(identity, clean, attack, seed)[1]
        return self._score(identity, "output", output, method, [], prompts, seed, against=self.clean_edits[key])


def protected_count(share: float, total: int) -> int:
    """How many of ``total`` photos a share protects: at least one when the share is positive."""
    return 0 if share <= 0 else max(1, min(total, math.floor(share * total + 0.5)))


def _method_of(stage: Stage) -> str:
    spec = stage.spec
    method = spec.get("method") or spec.get("metric") or (spec.get("chain") or [{}])[0]
    return str(method.get("fingerprint", ""))


def plan(config: BenchmarkConfig) -> tuple[list[Stage], list[Cell], dict[str, dict[str, Any]]]:
    """The stages and the cells of the grid.

    The stages come kind by kind (protect, purify, train, generate, edit, score: each kind reads
    only earlier kinds, so this is an order where every stage follows the stages it reads), and
    within a kind grouped by method, so consecutive stages reuse a loaded model.
    """
    planner = Planner(config)
    stages, cells = planner.build()
    order = {kind: index for index, kind in enumerate(KINDS)}
    stages.sort(key=lambda stage: (order[stage.kind], _method_of(stage)))
    return stages, cells, planner.methods
