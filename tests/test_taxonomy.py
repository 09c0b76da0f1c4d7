"""Taxonomy files: the shipped COCO mapping, many-to-one rules, and each validation error."""

from __future__ import annotations

import pytest

from panoptic_detr.gt.taxonomy import IGNORE, STUFF, THING, Rule, Taxonomy, TaxonomyError, bundled
from panoptic_detr.structures import Categories

SOURCE = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "plant", "isthing": 1},
    {"id": 3, "name": "grass", "isthing": 0},
    {"id": 4, "name": "tree", "isthing": 0},
    {"id": 5, "name": "junk", "isthing": 0},
    {"id": 6, "name": "sky", "isthing": 0},
]

GOOD = """
targets:
  human: {id: 7, isthing: true, color: [1, 2, 3]}
  vegetation: {isthing: false}
  sky: {isthing: false}
things: {person: human}
stuff: {plant: vegetation, grass: vegetation, tree: vegetation}
ignore: [junk]
"""


def _write(tmp_path, text):
    path = tmp_path / "map.yaml"
    path.write_text(text)
    return path


def test_coco_coarse_validates_and_covers_all_133():
    assert "coco_coarse" in bundled()
    tax = Taxonomy.load("coco_coarse")
    coco = Categories.coco_panoptic()
    assert tax.check_source(coco.items, "COCO panoptic") == []  # no category left unmapped
    rules = tax.rule_by_id(coco.items)
    assert len(rules) == 133
    for c in coco.items:
        rule = rules[c["id"]]
        if c["isthing"]:  # every COCO thing kept as itself
            assert rule == Rule(THING, c["id"]) and tax.by_name[c["name"]]["color"] == c["color"]
        else:
            assert rule.mode in (STUFF, IGNORE)
    names = {t["id"]: t["name"] for t in tax.targets}
    assert names[rules[171].target] == "wall" == names[rules[199].target]  # wall-brick, wall-other
    assert names[rules[187].target] == "sky"
    assert rules[100].mode == IGNORE  # cardboard
    stuff_targets = [t for t in tax.targets if not t["isthing"]]
    assert len(stuff_targets) == 12 and len({t["id"] for t in tax.targets}) == len(tax.targets)


def test_many_to_one_ids_colours_and_uncovered_sources(tmp_path):
    tax = Taxonomy.load(_write(tmp_path, GOOD))
    by = tax.by_name
    assert by["human"] == {"id": 7, "name": "human", "isthing": 1, "color": [1, 2, 3],
                           "supercategory": "human"}
    assert (by["vegetation"]["id"], by["sky"]["id"]) == (1, 2)  # lowest free ids, file order
    rules = tax.rule_by_id(SOURCE)
    assert rules[1] == Rule(THING, 7)
    assert rules[2] == rules[3] == rules[4] == Rule(STUFF, 1)  # a thing turned into stuff
    assert rules[5] == Rule(IGNORE, None) and rules[6] == Rule(IGNORE, None)
    missing = tax.check_source(SOURCE, "semantic:labels")
    assert len(missing) == 1 and "'sky' (id 6) of semantic:labels is not in the taxonomy" in missing[0]
    assert missing[0].startswith(str(tmp_path / "map.yaml"))


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("{person: human}", "{person: humans}"),
     "things['person'] -> 'humans': missing target"),
    (GOOD.replace("{person: human}", "{person: sky}"),
     "things['person'] -> 'sky': target used as both thing and stuff"),
    (GOOD.replace("plant: vegetation", "plant: human"),
     "stuff['plant'] -> 'human': target used as both thing and stuff"),
    (GOOD.replace("[junk]", "[junk, grass]"), "ignore['grass']: source category already listed"),
    (GOOD.replace("{isthing: false}", "{colour: 3}", 1), "targets['vegetation']: needs 'isthing"),
    (GOOD.replace("[1, 2, 3]", "[1, 2]"), "targets['human']: color must be"),
    (GOOD + "extra: 1\n", "unknown section 'extra'"),
    ("targets: [", "cannot read the taxonomy"),
])
def test_validation_errors_name_the_file_and_entry(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(TaxonomyError) as e:
        Taxonomy.load(path)
    line = next(l for l in str(e.value).splitlines() if expected in l)
    assert line.startswith(f"{path}: ")


def test_check_source_rejects_unknown_sources_and_stuff_kept_as_things(tmp_path):
    tax = Taxonomy.load(_write(tmp_path, GOOD.replace("junk]", "junk, jnuk]")))
    with pytest.raises(TaxonomyError, match=r"map.yaml: 'jnuk': unknown source category"):
        tax.check_source(SOURCE)
    tax = Taxonomy.load(_write(tmp_path, GOOD.replace("{person: human}", "{person: human, grass: human}")
                               .replace("grass: vegetation, ", "")))
    with pytest.raises(TaxonomyError, match=r"things\['grass'\]: source labels it as stuff"):
        tax.check_source(SOURCE)


def test_identity_and_added_targets_keep_free_ids():
    tax = Taxonomy.identity(SOURCE)
    assert tax.rule_by_id(SOURCE)[1] == Rule(THING, 1) and tax.rule_by_id(SOURCE)[3] == Rule(STUFF, 3)
    assert tax.add_target({"id": 9, "name": "widget"})["id"] == 9
    assert tax.add_target({"id": 3, "name": "gadget"})["id"] == 10  # 3 is taken
