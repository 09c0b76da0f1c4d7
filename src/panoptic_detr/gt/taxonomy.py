"""Taxonomy mappings: which source category becomes which target category (YAML files).

A source (a panoptic model, a panoptic dataset, semantic PNGs) labels pixels with its own
categories; a taxonomy says what each becomes in the dataset being built:

```yaml
targets:                  # the categories of the built dataset
  person: {id: 1, isthing: true, color: [220, 20, 60]}
  wall:   {id: 101, isthing: false, color: [120, 120, 120]}   # id and color are optional
things:                   # source things kept as instances of a target thing class
  person: person
stuff:                    # source categories merged per class into a target stuff class
  wall-brick: wall        #   (a source thing listed here is turned into stuff)
  wall-stone: wall
ignore: [cardboard]       # source categories whose pixels become void
```

Many source categories may map to one target. Source categories not named anywhere become
void and are reported. Errors name the file and the entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SECTIONS = ("targets", "things", "stuff", "ignore")
THING, STUFF, IGNORE = "thing", "stuff", "ignore"


class TaxonomyError(ValueError):
    """An invalid taxonomy file; the message has one line per problem, each naming the file."""


@dataclass(frozen=True)
class Rule:
    """What a source category becomes."""

    mode: str
    """'thing' (kept as instances), 'stuff' (merged per target class) or 'ignore' (void)."""
    target: int | None
    """Target category id, None for 'ignore'."""


@dataclass
class Taxonomy:
    """Target categories plus a rule per source category name."""

    targets: list[dict[str, Any]]
    """COCO category dicts of the built dataset: id, name, isthing (0/1), color."""
    rules: dict[str, Rule]
    """Source category name -> Rule."""
    path: str = "<taxonomy>"
    by_name: dict[str, dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {t["name"]: t for t in self.targets}

    @classmethod
    def load(cls, path: str | Path) -> Taxonomy:
        """Read and validate a YAML taxonomy; raises TaxonomyError listing every problem.

        `path` is a file, or the name of a bundled taxonomy (e.g. "coco_coarse").
        """
        path = Path(path)
        if not path.exists() and str(path) in bundled():
            path = Path(str(resources.files("panoptic_detr.assets") / "taxonomies" / f"{path}.yaml"))
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise TaxonomyError(f"{path}: cannot read the taxonomy ({_one_line(e)})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, path: str = "<taxonomy>") -> Taxonomy:
        errors: list[str] = []
        if not isinstance(data, dict):
            raise TaxonomyError(f"{path}: a taxonomy is a mapping with keys {', '.join(SECTIONS)}")
        for key in data:
            if key not in SECTIONS:
                errors.append(f"{path}: unknown section {key!r} (expected {', '.join(SECTIONS)})")
        targets = _parse_targets(data.get("targets"), path, errors)
        by_name = {t["name"]: t for t in targets}
        rules: dict[str, Rule] = {}
        seen: dict[str, str] = {}

        def add(section: str, source: Any, rule: Rule) -> None:
            source = str(source)
            if source in seen:
                errors.append(f"{path}: {section}[{source!r}]: source category already listed under "
                              f"{seen[source]}")
            seen[source] = section
            rules[source] = rule

        for section, mode in (("things", THING), ("stuff", STUFF)):
            entries = data.get(section) or {}
            if not isinstance(entries, dict):
                errors.append(f"{path}: {section}: expected a mapping 'source category: target'")
                continue
            for source, target in entries.items():
                t = by_name.get(str(target))
                if t is None:
                    errors.append(f"{path}: {section}[{source!r}] -> {target!r}: missing target "
                                  "(not declared under targets)")
                    continue
                if bool(t["isthing"]) != (mode == THING):
                    kind = "thing" if t["isthing"] else "stuff"
                    errors.append(f"{path}: {section}[{source!r}] -> {target!r}: target used as both "
                                  f"thing and stuff (declared {kind}, used under {section})")
                    continue
                add(section, source, Rule(mode, int(t["id"])))
        ignore = data.get("ignore") or []
        if not isinstance(ignore, list):
            errors.append(f"{path}: ignore: expected a list of source categories")
            ignore = []
        for source in ignore:
            add("ignore", source, Rule(IGNORE, None))
        if errors:
            raise TaxonomyError("\n".join(errors))
        return cls(targets, rules, path)

    @classmethod
    def identity(cls, categories: Iterable[dict[str, Any]]) -> Taxonomy:
        """Every source category kept as itself (things as instances, stuff merged per class)."""
        targets = [_category(c) for c in categories]
        rules = {t["name"]: Rule(THING if t["isthing"] else STUFF, t["id"]) for t in targets}
        return cls(targets, rules, "<identity>")

    def check_source(self, categories: Iterable[dict[str, Any]], source: str = "source") -> list[str]:
        """Check the taxonomy against a source's categories.

        Raises TaxonomyError for entries naming unknown source categories and for source stuff
        listed under `things` (a stuff region has no instances to keep). Returns one line per
        source category the taxonomy does not mention (its pixels become void).
        """
        cats = {str(c["name"]): c for c in categories}
        errors = []
        for name, rule in self.rules.items():
            c = cats.get(name)
            if c is None:
                errors.append(f"{self.path}: {name!r}: unknown source category (not among the "
                              f"{len(cats)} categories of {source})")
            elif rule.mode == THING and not c.get("isthing", 1):
                errors.append(f"{self.path}: things[{name!r}]: {source} labels it as stuff, it has no "
                              "instances to keep (list it under stuff)")
        if errors:
            raise TaxonomyError("\n".join(errors))
        return [f"{self.path}: source category {n!r} (id {c['id']}) of {source} is not in the taxonomy: "
                "its pixels become void" for n, c in cats.items() if n not in self.rules]

    def rule_by_id(self, categories: Iterable[dict[str, Any]]) -> dict[int, Rule]:
        """Source category id -> Rule (ignore for categories the taxonomy does not name)."""
        return {int(c["id"]): self.rules.get(str(c["name"]), Rule(IGNORE, None)) for c in categories}

    def add_target(self, category: dict[str, Any]) -> dict[str, Any]:
        """Add a target category (e.g. an annotated class), keeping its id when free."""
        cat = _category(category)
        used = {int(t["id"]) for t in self.targets}
        if cat["id"] in used:
            cat["id"] = max(used) + 1
        self.targets.append(cat)
        self.by_name[cat["name"]] = cat
        return cat


def bundled() -> list[str]:
    """Names of the taxonomies shipped in assets/taxonomies."""
    folder = resources.files("panoptic_detr.assets") / "taxonomies"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _parse_targets(raw: Any, path: str, errors: list[str]) -> list[dict[str, Any]]:
    if not isinstance(raw, dict) or not raw:
        errors.append(f"{path}: targets: expected a non-empty mapping 'name: {{isthing: ..}}'")
        return []
    targets, ids = [], set()
    for name, spec in raw.items():
        where = f"{path}: targets[{name!r}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("isthing"), bool | int):
            errors.append(f"{where}: needs 'isthing: true|false'")
            continue
        color = spec.get("color")
        if color is not None and not (isinstance(color, list) and len(color) == 3
                                      and all(isinstance(v, int) and 0 <= v <= 255 for v in color)):
            errors.append(f"{where}: color must be [r, g, b] with integers 0-255")
            continue
        cid = spec.get("id")
        if cid is not None and (not isinstance(cid, int) or cid < 1 or cid == 255):
            errors.append(f"{where}: id must be a positive integer other than 255 (void)")
            continue
        if cid in ids:
            errors.append(f"{where}: id {cid} used twice")
            continue
        if cid is not None:
            ids.add(cid)
        targets.append({"id": cid, "name": str(name), "isthing": int(bool(spec["isthing"])),
                        "color": color, "supercategory": str(spec.get("supercategory", name))})
    # targets without an id get the lowest free ones, in file order
    free = (i for i in range(1, 1 << 24) if i not in ids and i != 255)
    for t in targets:
        if t["id"] is None:
            t["id"] = next(free)
        if t["color"] is None:
            t["color"] = _color(t["id"])
    return targets


def _category(c: dict[str, Any]) -> dict[str, Any]:
    cid = int(c["id"])
    return {"id": cid, "name": str(c.get("name", f"class {cid}")), "isthing": int(bool(c.get("isthing", 1))),
            "color": list(c["color"]) if c.get("color") is not None else _color(cid),
            "supercategory": str(c.get("supercategory", c.get("name", "")))}


def _color(cid: int) -> list[int]:
    """A stable, well-spread colour for categories without one (as structures.Categories)."""
    h = (int(cid) * 2654435761) & 0xFFFFFF
    return [(h >> 16) & 255, (h >> 8) & 255, h & 255]


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
