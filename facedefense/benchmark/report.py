"""The outputs: ``results.jsonl`` (one row per cell, metric and prompt, with per-image values),
``report.md`` (the papers' layout), ``examples.png`` plus ``examples/<cell>.png`` (clean,
protected, purified, generated), and ``report.html``: the report and ``examples.png`` in one
self-contained page (`facedefense.report_html`)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facedefense.benchmark.config import NONE, BenchmarkConfig
from facedefense.benchmark.graph import Cell, digest
from facedefense.benchmark.stages import IMAGES, STAGE_FILE, Cache
from facedefense.figures import labelled_sheet, labelled_strip, save_png, thumbnail
from facedefense.io import atomic_path

ARROWS = {"higher": "↑", "lower": "↓"}
#: Longest example file name in bytes before ``.png`` (file systems allow 255).
MAX_NAME_BYTES = 200


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically, with the umask's permissions (`facedefense.io`'s
    temporary file renamed into place: never a half-written report)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def example_file(cell: Cell) -> str:
    """``examples/<cell>.png``, relative to the output folder; a name too long for a file system
    is shortened and made unique with a hash of the whole cell name."""
    name = cell.name.replace("/", "__")
    if len(name.encode()) > MAX_NAME_BYTES:
        name = name.encode()[: MAX_NAME_BYTES - 13].decode("utf-8", "ignore") + "-" + digest(cell.name, 12)
    return f"examples/{name}.png"


def collect_rows(
    config: BenchmarkConfig, cells: Sequence[Cell], outcomes: dict[str, dict[str, Any]], cache: Cache,
    methods: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per cell, metric and prompt (a failed cell: one row per metric with its error)."""
    protocol = config.protocol.to_dict()
    rows = []
    for cell in cells:
        described = {
            "defender": methods.get(f"defender:{cell.defender}", {"name": cell.defender}),
            "purifiers": [methods[f"purifier:{step.label}"] for chain in config.purifiers if chain.label == cell.purifier for step in chain.steps],
            "attack": next(methods[f"{a.method.kind}:{a.label}"] for a in config.attacks if a.label == cell.attack),
        }
        for metric in config.metrics:
            for key in cell.scores[metric.label]:
                outcome = outcomes.get(key, {"status": "failed", "error": "not run"})
                base = {
                    **cell.facts(), "cell": cell.name, "metric": metric.label,
                    "stages": {"protect": cell.protect, "purify": cell.purify, "train": cell.train, "output": cell.output, "score": key},
                    "protocol": protocol, "methods": {**described, "metric": methods[f"metric:{metric.label}"]},
                }
                if outcome["status"] in ("done", "cached"):
                    info = json.loads((cache.path(key, "score") / STAGE_FILE).read_text(encoding="utf-8"))
                    for result in info["results"]:
                        # input: the attacker's input vs the clean photos; generated: a set or unpaired
                        # metric of the outputs; output: an editing attack's outputs, paired
                        target = result.get("target") or ("input" if result["prompt"] is None else "generated")
                        rows.append({**base, "status": "ok", **result, "target": target})
                else:
                    rows.append({**base, "status": outcome["status"], "error": outcome.get("error", ""), "origin": outcome.get("origin", ""),
                                 "prompt": None, "value": math.nan, "per_image": None})
    return rows


#: Protocol fields that reach generation after personalization (not a method option).
GENERATION_FIELDS = ("prompts", "num_images", "inference_steps", "guidance_scale")
#: Options a settings line leaves out (where and in which precision a method runs).
UNSHOWN_OPTIONS = ("device", "dtype", "class_cache")


def unused_fields(config: BenchmarkConfig, methods: dict[str, dict[str, Any]]) -> set[str]:
    """Protocol fields that reached no method of the grid: taken by no method's options (each
    method's ``protocol_fields``), no generation (no personalizer attack), no set-level metric."""
    used = {field for method in methods.values() for field in method.get("protocol_fields", [])}
    used |= {"instance_prompt", "class_prompt"}  # identity sets carry them to every defender
    if any(attack.method.kind == "personalizer" for attack in config.attacks):
        used |= set(GENERATION_FIELDS)
    if any(method.get("pairing") == "set" for method in methods.values() if method.get("kind") == "metric"):
        used.add("reference_set")
    if any(attack.method.kind == "editor" and attack.prompts == config.protocol.instructions for attack in config.attacks):
        used.add("instructions")  # an editor that named no instructions of its own
    return {field for field in config.protocol.to_dict() if field not in used and field != "profile"}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def attack_settings(attack: Any, methods: dict[str, dict[str, Any]], protocol: Any) -> str:
    """One line with the settings the attack ran with: its method's full configuration (defaults,
    protocol values and the config's options resolved) and, for a personalizer, the generation."""
    method = methods[f"{attack.method.kind}:{attack.label}"]
    config = {key: value for key, value in method.get("config", {}).items() if key not in UNSHOWN_OPTIONS and value != ""}
    line = "Settings: " + ", ".join(f"{key} {_shown(value)}" for key, value in config.items()) + "."
    if attack.method.kind == "personalizer":
        line += (f" Generation: {attack.num_images or protocol.num_images} image(s) per prompt, "
                 f"{protocol.inference_steps} sampling steps, guidance {protocol.guidance_scale:g}.")
    else:
        line += " Instructions: " + "; ".join(f'"{text}"' for text in attack.prompts) + "."
    return line


def write_results(rows: Sequence[dict[str, Any]], path: Path) -> None:
    write_text(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


def _stats(values: list[float]) -> tuple[float, float, int]:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, 0
    mean = sum(finite) / len(finite)
    spread = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return mean, spread, len(finite)


def _number(value: float, digits: int = 4) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}g}"


def render_report(
    config: BenchmarkConfig, rows: Sequence[dict[str, Any]], summary: dict[str, Any], methods: dict[str, dict[str, Any]]
) -> str:
    """The report: per attack, rows defenders x purifiers, columns metrics per prompt (mean ± spread
    over identities and seeds), and per defender the worst case over the purifier chains."""
    protocol = config.protocol
    unused = unused_fields(config, methods)
    lines = [f"# Benchmark: {config.path.name}", ""]
    lines += [
        f"Protocol **{protocol.profile}**" + (f" (overridden: {', '.join(sorted(config.protocol_overrides))})" if config.protocol_overrides else "") + ".",
        "",
        "| field | value |", "|---|---|",
        *(f"| {key} | {value if key != 'eps' else f'{value:.5g} ({value * 255:.3g}/255)'}{' (not used by this grid)' if key in unused else ''} |"
          for key, value in protocol.to_dict().items() if key != "profile"),
        "",
        *(["Fields marked *not used* reached no method of this grid (each method's own options and the "
           "settings under each attack below are what ran).", ""] if unused else []),
        f"{len(config.identities)} identit{'y' if len(config.identities) == 1 else 'ies'} "
        f"({', '.join(i.name for i in config.identities)}), seeds {', '.join(map(str, config.seeds))}; "
        f"values are mean ± standard deviation over identities and seeds. "
        f"Arrows give the direction that means *protected*, except in \"(input)\" columns, which compare the "
        f"attacker's input (protected, then purified) with the clean photos and whose arrows point to less "
        f"visible changes; **worst case** is, per column, the purifier chain "
        f"an adversary would pick. "
        f"Stages: {summary['stages']} ({summary['computed']} computed, {summary['cached']} cached, {summary['failed']} failed, {summary['skipped']} skipped).",
        "",
    ]
    if summary["failed"]:
        lines += [f"**Incomplete: {summary['failed']} stage(s) failed** (see Failures below); the tables hold what finished.", ""]
    ok = [row for row in rows if row["status"] == "ok"]
    for attack in config.attacks:
        attack_rows = [row for row in ok if row["attack"] == attack.label]
        prompts = list(attack.prompts or protocol.prompts)
        columns: list[tuple[str, str | None, str]] = []
        directions = {metric.label: methods[f"metric:{metric.label}"]["protected_if"] for metric in config.metrics}
        editor = attack.method.kind == "editor"
        for metric in config.metrics:
            arrow = ARROWS[directions[metric.label]]
            described = methods[f"metric:{metric.label}"]
            if described.get("pairing") == "paired":
                better = ARROWS["higher" if described["higher_is_better"] else "lower"]
                columns.append((metric.label, None, f"{metric.label} {better} (input)"))
                if not editor:  # a personalizer's images have no partner to compare with
                    continue
                against = "vs source" if described.get("edit_reference") == "source" else "vs clean edit"
                columns += [(metric.label, prompt, f"{metric.label} {arrow} P{index + 1} ({against})") for index, prompt in enumerate(prompts)]
            else:
                columns += [(metric.label, prompt, f"{metric.label} {arrow} P{index + 1}") for index, prompt in enumerate(prompts)]
        kind = "personalizer" if attack.method.kind == "personalizer" else "editor"
        lines += [f"## {attack.label} ({kind} `{attack.method.name}`)", "", attack_settings(attack, methods, protocol), ""]
        lines += ["| defender | purifier | " + " | ".join(title for _, _, title in columns) + " |"]
        lines += ["|---|---|" + "---|" * len(columns)]
        groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for row in attack_rows:
            share = "" if row["share"] in (0.0, 1.0) else f" ({row['share']:g})"
            groups[(row["defender"] + share, row["purifier"], f"{row['metric']}\x00{row['prompt']}")].append(row["value"])
        defenders = list(dict.fromkeys(key[0] for key in groups))
        for defender in defenders:
            worst: list[tuple[float, str]] = []
            for chain in config.purifiers:
                cells = []
                for index, (metric, prompt, _) in enumerate(columns):
                    mean, spread, count = _stats(groups.get((defender, chain.label, f"{metric}\x00{prompt}"), []))
                    cells.append("n/a" if count == 0 else f"{_number(mean)} ± {_number(spread, 2)}" if count > 1 else _number(mean))
                    direction = directions[metric]
                    if count and prompt is not None:  # the attack's outputs (input columns say how visible)
                        score = mean if direction == "higher" else -mean  # the adversary picks the least protected
                        if len(worst) <= index:
                            worst += [(math.inf, "")] * (index + 1 - len(worst))
                        if score < worst[index][0]:
                            worst[index] = (score, chain.label)
                lines.append(f"| {defender} | {chain.label} | " + " | ".join(cells) + " |")
            if len(config.purifiers) > 1 and defender.split(" (")[0] != NONE:
                cells = []
                for index, (metric, prompt, _) in enumerate(columns):
                    if prompt is None:  # an input column: no adversary's choice
                        cells.append("")
                    elif index < len(worst) and worst[index][1]:
                        value = worst[index][0] if directions[metric] == "higher" else -worst[index][0]
                        cells.append(f"**{_number(value)}** ({worst[index][1]})")
                    else:
                        cells.append("n/a")
                lines.append(f"| {defender} | **worst case** | " + " | ".join(cells) + " |")
        lines += ["", *(f"P{index + 1}: \"{prompt}\"" + ("  " if index < len(prompts) - 1 else "") for index, prompt in enumerate(prompts)), ""]
    failures: dict[tuple[str, str], set[str]] = defaultdict(set)
    for failure in summary.get("failures", []):  # every failed stage, also one no cell reads (an
        failures.setdefault((failure["stage"], failure["error"]), set())  # attack only input metrics score)
    for row in rows:
        if row["status"] != "ok":
            failures[(str(row.get("origin", "")), str(row.get("error", "")))].add(row["cell"])
    if failures:
        lines += ["## Failures", "", "The failing stages (not cached: the next run tries them again) and the cells they cost.", ""]
        lines += ["| failed stage | error | cells |", "|---|---|---|"]
        for (origin, error), cells_hit in failures.items():
            lines.append(f"| {origin.replace('|', '/')} | {error.replace('|', '/')} | {len(cells_hit)} |")
        lines.append("")
    lines += ["Per-image values, methods (fingerprints, options) and stage keys: `results.jsonl`. Example images: `examples.png` "
              "(with this report in one page: `report.html`).", ""]
    return "\n".join(lines)


# -- example images ------------------------------------------------------------------------------


def _cell_strip(cell: Cell, cache: Cache, kinds: dict[str, str], per_prompt: int, height: int) -> tuple[list[Any], list[str]] | None:
    try:
        protect = json.loads((cache.path(cell.protect, "protect") / STAGE_FILE).read_text())
        purify = json.loads((cache.path(cell.purify, "purify") / STAGE_FILE).read_text())
        output_kind = kinds[cell.output]
        output = json.loads((cache.path(cell.output, output_kind) / STAGE_FILE).read_text())
    except (OSError, ValueError, KeyError):
        return None
    first = protect["files"][0]
    clean = Path(protect.get("clean", [""])[0]) if protect.get("clean") else None
    tiles, titles = [], []
    if clean is not None and clean.is_file():
        tiles.append(thumbnail(clean, height))
        titles.append("clean")
    tiles.append(thumbnail(cache.path(cell.protect, "protect") / IMAGES / first, height))
    titles.append("protected")
    tiles.append(thumbnail(cache.path(cell.purify, "purify") / IMAGES / purify["files"][0], height))
    titles.append("purified")
    for group in range(len(output.get("prompts", []))):
        chosen = [f for f, g in zip(output["files"], output["groups"]) if g == group][:per_prompt]
        for name in chosen:
            tiles.append(thumbnail(cache.path(cell.output, output_kind) / IMAGES / name, height))
            titles.append(f"P{group + 1}")
    return tiles, titles


def _share(cell: Cell) -> str:
    return "" if cell.share in (0.0, 1.0) else f" ({cell.share:g})"


def write_examples(cells: Sequence[Cell], cache: Cache, kinds: dict[str, str], output: Path, *, per_prompt: int = 2, height: int = 128) -> list[Path]:
    """``examples/<cell>.png`` for every finished cell and ``examples.png``, one row per cell of the
    first identity and seed (clean, protected, purified, then generated images per prompt). A
    cell that did not finish loses the image an earlier run made of it (in the run's own claimed
    folder: only its own files are there)."""
    folder = output / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    written, overview = [], []
    for cell in cells:
        strip = _cell_strip(cell, cache, kinds, per_prompt, height)
        if strip is None:  # an earlier run's image of this cell would show what this run did not make
            (output / example_file(cell)).unlink(missing_ok=True)
            continue
        canvas = labelled_strip(*strip)
        path = output / example_file(cell)
        save_png(canvas, path)
        written.append(path)
        if cell.identity == cells[0].identity and cell.seed == cells[0].seed:
            overview.append((cell, canvas))
    if overview:
        rows = [(f"{cell.defender}{_share(cell)} | {cell.purifier} | {cell.attack}", canvas) for cell, canvas in overview]
        save_png(labelled_sheet(rows), output / "examples.png")
        written.append(output / "examples.png")
    else:
        (output / "examples.png").unlink(missing_ok=True)
    return written


def write_html(report: str, output: Path, title: str) -> Path:
    """``report.html``: the Markdown ``report`` and ``examples.png`` (embedded) in one page."""
    from facedefense.report_html import markdown_page, write_page

    examples = [(output / "examples.png", "examples: a row per cell (first identity and seed): clean, protected, "
                 "purified, then generated images per prompt")]
    return write_page(markdown_page(title, report, examples, command="benchmark"), output / "report.html")
