"""Concept hierarchies in users' annotations: concept paths, hierarchy files (CSV, TSV, JSON, YAML)
and the tree that plain concept lists imply; labels, upward closure, an added root, level captions,
the errors (nothing written), train/test agreement, and the evaluation code on such a tree."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlunlearn.data import (
    SYNTHETIC_ROOT,
    Tokenizer,
    check_test_concepts,
    concept_labels,
    describe,
    implied_parents,
    load_image_text_folder,
    load_tar_shards,
    read_hierarchy_file,
    with_hierarchy,
)
from vlunlearn.errors import DataError

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_EDGES = {"even": "number", "odd": "number", **{d: ("even" if i % 2 == 0 else "odd") for i, d in enumerate(DIGITS)}}


def _folder(root: Path, concepts: list, name: str = "ann.jsonl", size: int = 8) -> Path:
    """One 8x8 image per row, captioned "image <i>", with the given concept lists, as JSONL."""
    (root / "img").mkdir(exist_ok=True)
    lines = []
    for i, listed in enumerate(concepts):
        Image.new("RGB", (size, size), (i * 7 % 256, i * 31 % 256, 90)).save(root / "img" / f"{i}.png")
        lines.append(json.dumps({"path": f"img/{i}.png", "caption": f"image {i}", "concepts": listed}))
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


def _digit_rows(digits=DIGITS, copies: int = 2) -> list[list[str]]:
    """Plain lists, specific first, as in the issue: ["seven", "odd", "number"]."""
    return [[d, "even" if DIGITS.index(d) % 2 == 0 else "odd", "number"] for d in digits for _ in range(copies)]


def _edges_csv(path: Path, edges: dict[str, str], delimiter: str = ",") -> Path:
    path.write_text(f"child{delimiter}parent\n" + "".join(f"{c}{delimiter}{p}\n" for c, p in edges.items()))
    return path


def _label_names(data) -> list[str | None]:
    return [data.class_names[k] if k >= 0 else None for k in data.labels.tolist()]


# --------------------------------------------------------------------------- the three sources


def test_concept_paths_make_the_tree_close_concepts_upward_and_label_the_most_specific(tmp_path):
    rows = [["number/odd/seven"], ["number/even/two"], ["seven"], ["number/odd"], ["number/odd/three"],
            ["seven", "three"], ["number/even/four"]]
    data = load_image_text_folder(tmp_path, _folder(tmp_path, rows), image_size=8)
    tree = data.hierarchy
    assert tree is not None and tree.root == "number" and not tree.synthetic_root
    assert tree.levels == ("generic", "family", "class")
    assert tree.parents == {"even": "number", "odd": "number", "seven": "odd", "two": "even", "three": "odd", "four": "even"}
    assert data.class_names == tree.classes == ("four", "two", "seven", "three")  # tree order, children by name
    assert data.concepts[2] == {"seven", "odd", "number"}  # a plain name gets its ancestors
    assert data.concepts[3] == {"odd", "number"}
    assert _label_names(data) == ["seven", "two", "seven", None, "three", None, "four"]  # "odd" is no class; two classes
    assert data.captions[0] == ("image 0",)  # no level captions unless asked
    lines = describe(data)
    assert "from the concept paths in" in lines[0] and "3 levels (generic > family > class)" in lines[1]
    assert "number > 'even', 'odd'" in lines and "odd > 'seven', 'three'" in lines
    assert lines[-1].startswith("7 items: 5 with a class; 1 without one") and "1 with several most specific" in lines[-1]


@pytest.mark.parametrize("kind", ["csv", "tsv", "json", "yaml"])
def test_a_hierarchy_file_is_the_tree_and_every_format_gives_the_same_one(tmp_path, kind):
    annotations = _folder(tmp_path, [["seven"], ["two"], ["odd"], ["number/odd/seven"]])
    file = tmp_path / f"digits.{kind}"
    if kind in ("csv", "tsv"):
        _edges_csv(file, DIGIT_EDGES, "," if kind == "csv" else "\t")
    elif kind == "json":
        file.write_text(json.dumps(DIGIT_EDGES))
    else:
        file.write_text("".join(f"{c}: {p}\n" for c, p in DIGIT_EDGES.items()))
    assert read_hierarchy_file(file) == DIGIT_EDGES
    data = load_image_text_folder(tmp_path, annotations, 8, hierarchy=file)
    tree = data.hierarchy
    assert tree.name == "digits" and tree.root == "number" and len(tree.classes) == 10  # every leaf of the file
    assert set(data.class_names) == set(DIGITS) and "from the hierarchy file" in tree.notes[0]
    assert _label_names(data) == ["seven", "two", None, "seven"]
    assert data.concepts[1] == {"two", "even", "number"}
    # the test data, with other classes, gets an equal tree from the same file
    test = load_image_text_folder(tmp_path, _folder(tmp_path, [["nine"], ["zero"]], "test.jsonl"), 8, hierarchy=file)
    assert test.hierarchy == tree and test.class_names == data.class_names and _label_names(test) == ["nine", "zero"]
    check_test_concepts(data, test)


def test_a_file_may_be_a_forest_and_name_top_concepts_the_data_does_not(tmp_path):
    edges = {"cat": "mammal", "dog": "mammal", "owl": "bird", "oak": "tree"}
    file = _edges_csv(tmp_path / "h.csv", edges)
    data = load_image_text_folder(tmp_path, _folder(tmp_path, [["cat"], ["owl"], ["oak"]]), 8, hierarchy=file)
    assert data.hierarchy.root == SYNTHETIC_ROOT and data.hierarchy.classes == ("owl", "cat", "dog", "oak")
    # rows that name top concepts may still lack a whole branch (small test data)
    full = load_image_text_folder(tmp_path, _folder(tmp_path, [["cat", "mammal"]], "test.jsonl"), 8, hierarchy=file)
    assert full.hierarchy == data.hierarchy and _label_names(full) == ["cat"]


def test_the_hierarchy_the_lists_imply_is_used_and_reported():
    rows = _digit_rows() + [["odd", "number"], ["seven", "three", "odd", "number"]]
    result = concept_labels(rows, [f"row {i}" for i in range(len(rows))], "mine", source="ann.jsonl")
    tree = result.hierarchy
    assert tree.parents == DIGIT_EDGES and tree.root == "number" and tree.name == "mine"
    assert tree.notes == ("implied by the concept lists of ann.jsonl",)
    labels = [tree.classes[k] if k >= 0 else None for k in result.labels.tolist()]
    assert labels == [row[0] for row in rows[:-2]] + [None, None]
    parents, notes = implied_parents([["seven", "odd", "number"], ["three", "odd", "number"], ["two", "even", "number"]])
    assert parents == {"seven": "odd", "three": "odd", "two": "even", "odd": "number", "even": "number"}
    assert notes == ["'even', 'two' are on the same items; ordered as the rows list them: two below even"]


def test_concepts_on_the_same_items_follow_the_order_the_rows_list_them_in():
    # every odd digit: "odd" and "number" are on the same items; the rows list specific -> generic
    parents, notes = implied_parents(_digit_rows(("one", "three", "five")))
    assert parents["one"] == "odd" and parents["odd"] == "number"
    assert "ordered as the rows list them: odd below number" in notes[0]
    generic_first = [row[::-1] for row in _digit_rows(("one", "three", "five"))]
    assert implied_parents(generic_first)[0] == parents
    # with no related pair to learn the direction from, tied concepts stay side by side: no tree
    flat = concept_labels([["red", "colour"], ["green"]], ["a", "b"], "colours")
    assert flat.hierarchy is None and flat.class_names == ("colour", "green", "red") and flat.labels.tolist() == [-1, 1]


def test_one_concept_per_item_stays_flat(tmp_path):
    data = load_image_text_folder(tmp_path, _folder(tmp_path, [["cat"], ["dog"], ["cat"], []]), 8)
    assert data.hierarchy is None and data.class_names == ("cat", "dog") and data.labels.tolist() == [0, 1, 0, -1]
    assert describe(data)[0].startswith("ann: no concept hierarchy; 2 classes")
    assert describe(data)[-1].startswith("4 items: 3 with a class; 1 without one")


def test_several_top_concepts_get_an_added_root_that_no_caption_names(tmp_path):
    rows = [["animal/cat"], ["animal/dog"], ["plant/tree"], ["plant/tree"]]
    data = load_image_text_folder(tmp_path, _folder(tmp_path, rows), 8, level_captions=True)
    tree = data.hierarchy
    assert tree.synthetic_root and tree.root == SYNTHETIC_ROOT and tree.levels == ("generic", "family", "class")
    assert tree.parents["animal"] == tree.parents["plant"] == SYNTHETIC_ROOT
    assert tree.caption_levels == ("family", "class")
    assert all(SYNTHETIC_ROOT not in text for captions in data.captions for text in captions)
    assert all(SYNTHETIC_ROOT not in concepts for concepts in data.concepts)
    assert data.captions[0] == ("a photo of animal.", "a photo of a cat.", "image 0")
    assert any("added root 'entity' above the top concepts 'animal', 'plant'" in line for line in describe(data))
    # a data set with its own "entity" concept gets "[entity]" as the added root
    other = concept_labels([["entity/cat"], ["plant/tree"]], ["a", "b"], "x").hierarchy
    assert other.root == f"[{SYNTHETIC_ROOT}]" and other.parents["entity"] == other.root


def test_level_captions_come_first_and_the_users_caption_stays_last(tmp_path):
    rows = [["number/odd/seven"], ["number/even/eight"], ["number/odd"]]
    data = load_image_text_folder(tmp_path, _folder(tmp_path, rows), 8, level_captions=True)
    assert data.captions[0] == ("a photo of number.", "a photo of odd.", "a photo of a seven.", "image 0")
    assert data.captions[1] == ("a photo of number.", "a photo of even.", "a photo of an eight.", "image 1")
    assert data.captions[2] == ("image 2",)  # no class: its own caption only
    assert data.canonical_captions() == ["image 0", "image 1", "image 2"]


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def test_tar_shards_take_a_hierarchy_file_and_level_captions(tmp_path):
    shard = tmp_path / "a.tar"
    with tarfile.open(shard, "w") as archive:
        for i, digit in enumerate(("seven", "two", "nine")):
            for suffix, data in (("png", _png(i)), ("json", json.dumps({"caption": f"a {digit}", "concepts": [digit]}).encode())):
                info = tarfile.TarInfo(f"s{i}.{suffix}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    file = _edges_csv(tmp_path / "h.csv", DIGIT_EDGES)
    data = load_tar_shards([shard], 8, hierarchy=file, level_captions=True)
    assert _label_names(data) == ["seven", "two", "nine"] and data.hierarchy.root == "number"
    assert data.captions[2] == ("a photo of number.", "a photo of odd.", "a photo of a nine.", "a nine")
    assert load_tar_shards([shard], 8).hierarchy is None  # one concept per item: flat, as before


# --------------------------------------------------------------------------- errors


def _refused(tmp_path, annotations, match, **options):
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(DataError, match=match):
        load_image_text_folder(tmp_path, annotations, 8, **options)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_bad_hierarchy_files_are_refused_naming_the_line(tmp_path):
    annotations = _folder(tmp_path, [["seven"], ["two"]])
    file = tmp_path / "h.csv"
    file.write_text("child,parent\nseven,odd\nodd,number\nnumber,seven\ntwo,even\neven,number\n")
    _refused(tmp_path, annotations, r"h\.csv, line 2: the concept hierarchy has a cycle \(child -> parent\): "
             r"seven -> odd -> number -> seven", hierarchy=file)
    file.write_text("child,parent\nseven,seven\n")
    _refused(tmp_path, annotations, r"line 2: .*cycle.*seven -> seven", hierarchy=file)
    file.write_text("child,parent\nseven,odd\ntwo,\n")
    _refused(tmp_path, annotations, r"h\.csv, line 3: the parent must be a non-empty concept name", hierarchy=file)
    file.write_text("child,parent\nseven,odd\nseven,prime\n")
    _refused(tmp_path, annotations, r"line 3: 'seven' has the parent 'prime', but .*line 2 gives it 'odd'", hierarchy=file)
    file.write_text("name,up\nseven,odd\n")
    _refused(tmp_path, annotations, r"h\.csv, line 1: expected a header with the columns child and parent, not 'name,up'", hierarchy=file)
    file.write_text("child,parent\nseven,odd,x\n")
    _refused(tmp_path, annotations, r"h\.csv, line 2: 3 fields, but the header has 2", hierarchy=file)
    # a typo in a parent: "nubmer" is no concept of the data and has no parent
    _edges_csv(file, {**DIGIT_EDGES, "even": "nubmer"})
    rows = _folder(tmp_path, [["seven", "number"], ["two"]], "typo.jsonl")
    _refused(tmp_path, rows, r"h\.csv, line 2: unknown parent 'nubmer': .*never names it, while it names the top concept\(s\) 'number'", hierarchy=file)
    _refused(tmp_path, annotations, r"ann\.jsonl, line 1: concept\(s\) 'seven' not in the hierarchy file .*h\.csv \(2 concept\(s\) of the data in all: 'seven', 'two'\)", hierarchy=_edges_csv(file, {"x": "y"}))
    bad_json = tmp_path / "h.json"
    bad_json.write_text('{"seven": "odd",\n "two": }')
    _refused(tmp_path, annotations, r"h\.json, line 2: not valid JSON", hierarchy=bad_json)
    bad_json.write_text('{"seven": "odd", "seven": "prime"}')
    _refused(tmp_path, annotations, r"h\.json: the key 'seven' appears 2 times", hierarchy=bad_json)
    bad_json.write_text('[["seven", "odd"]]')
    _refused(tmp_path, annotations, r"h\.json: expected a mapping of child to parent", hierarchy=bad_json)
    bad_json.write_text('{"seven": ["odd"]}')
    _refused(tmp_path, annotations, r"h\.json, key 'seven': the parent must be a non-empty concept name", hierarchy=bad_json)
    (tmp_path / "h.txt").write_text("seven odd\n")
    _refused(tmp_path, annotations, r"unknown hierarchy format '\.txt'", hierarchy=tmp_path / "h.txt")
    _refused(tmp_path, annotations, r"hierarchy file not found: .*absent\.csv", hierarchy=tmp_path / "absent.csv")


def test_concepts_that_make_no_tree_are_refused_naming_them(tmp_path):
    file = _edges_csv(tmp_path / "h.csv", DIGIT_EDGES)
    rows = _folder(tmp_path, [["seven"], ["number/even/seven"]])
    _refused(tmp_path, rows, r"ann\.jsonl, line 2: a concept path puts 'seven' under 'even', but .*h\.csv, line 11 "
             r"puts it under 'odd'", hierarchy=file)
    rows = _folder(tmp_path, [["number/odd/seven"], ["numbers/odd/three"]])
    _refused(tmp_path, rows, r"line 2: the path 'numbers/odd/three' puts 'odd' under 'numbers', but .*line 1 puts it under 'number'")
    _refused(tmp_path, _folder(tmp_path, [["number//seven"]]), r"line 1: the concept path 'number//seven' has an empty concept")
    _refused(tmp_path, _folder(tmp_path, [["a/b/a"]]), r"line 1: the concept path 'a/b/a' names a concept twice")
    _refused(tmp_path, _folder(tmp_path, [["a/b"], ["b/a"]]), r"line \d: the concept hierarchy has a cycle")
    # classes at different depths
    _refused(tmp_path, _folder(tmp_path, [["number/odd/seven"], ["letter/a"]]),
             r"classes \(the leaves\) must all be at one depth, but 'a' is at depth 2 \(entity > letter > a\)")
    # "seven" is on items that all show "odd" and "prime", and neither of those is below the other
    rows = [["seven", "odd", "prime"], ["seven", "odd", "prime"], ["nine", "odd"], ["two", "prime"]]
    _refused(tmp_path, _folder(tmp_path, rows), r"imply no tree: every item with 'seven' also has 'odd' and 'prime'.*--hierarchy")


# --------------------------------------------------------------------------- train and test


def test_check_test_concepts_names_what_the_training_data_lacks(tmp_path):
    train = load_image_text_folder(tmp_path, _folder(tmp_path, _digit_rows(("one", "two"))), 8)
    test = load_image_text_folder(tmp_path, _folder(tmp_path, [["one"], ["two"]], "test.jsonl"), 8)
    check_test_concepts(train, test)
    rows = [[f"new{i}"] for i in range(7)]
    with pytest.raises(DataError, match=r"'test' has 7 concept\(s\) that the training data 'ann' lacks: 'new0', 'new1', "
                       r"'new2', 'new3', 'new4', \.\.\. \(7 in all\)"):
        check_test_concepts(train, load_image_text_folder(tmp_path, _folder(tmp_path, rows, "test.jsonl"), 8))


def test_with_hierarchy_puts_test_data_on_the_training_tree(tmp_path):
    train = load_image_text_folder(tmp_path, _folder(tmp_path, _digit_rows()), 8)
    # the test file has odd digits only: its own implied tree is smaller
    test = load_image_text_folder(tmp_path, _folder(tmp_path, _digit_rows(("three", "seven"), 1), "test.jsonl"), 8)
    assert test.hierarchy != train.hierarchy and test.class_names == ("seven", "three")
    moved = with_hierarchy(test, train.hierarchy)
    assert moved.hierarchy is train.hierarchy and moved.class_names == train.class_names
    assert _label_names(moved) == ["three", "seven"] and moved.concepts == test.concepts and moved.ids == test.ids
    # loading the test file on the training tree gives the same data
    again = load_image_text_folder(tmp_path, tmp_path / "test.jsonl", 8, hierarchy=train.hierarchy)
    assert again.hierarchy is train.hierarchy and torch.equal(again.labels, moved.labels)
    unknown = load_image_text_folder(tmp_path, _folder(tmp_path, [["ten", "even", "number"]], "test.jsonl"), 8)
    with pytest.raises(DataError, match=r"test, item 'img/0\.png': concept\(s\) 'ten' not in the hierarchy 'ann'"):
        with_hierarchy(unknown, train.hierarchy)


# --------------------------------------------------------------------------- evaluation on a users' tree


def test_zero_shot_and_hierarchy_diagnostics_accept_a_users_tree(tmp_path):
    from vlunlearn.evaluation.hierarchy import distance_to_origin_by_level
    from vlunlearn.evaluation.landing import hierarchy_prompts, landing_metrics, traversal_examples
    from vlunlearn.evaluation.zero_shot import DEFAULT_PROMPTS, class_prompts, evaluate_zero_shot
    from vlunlearn.models import build_model

    rows = [["animal/mammal/cat"], ["animal/mammal/dog"], ["animal/bird/owl"], ["plant/tree/oak"], ["plant/tree/oak"]]
    data = load_image_text_folder(tmp_path, _folder(tmp_path, rows, size=8), 28, level_captions=True)
    tree = data.hierarchy
    assert tree.synthetic_root and tree.caption_levels == ("level2", "family", "class")
    prompts = class_prompts(data)
    assert prompts[data.class_names.index("owl")] == [t.replace("a {}", "an {}").format("owl") for t in DEFAULT_PROMPTS]
    assert set(hierarchy_prompts(tree)) == {"animal", "plant", "mammal", "bird", "tree", "cat", "dog", "owl", "oak"}
    assert hierarchy_prompts(tree)["mammal"] == ["a photo of mammal."]

    torch.manual_seed(0)
    model, tokenizer = build_model("tiny", "lorentz").eval(), Tokenizer()
    by_level = distance_to_origin_by_level(model, data, tokenizer)
    assert list(by_level) == ["level2", "family", "class", "inputs"] and all(math.isfinite(v) and v > 0 for v in by_level.values())
    own = load_image_text_folder(tmp_path, tmp_path / "ann.jsonl", 28)  # users' captions only: by position
    assert list(distance_to_origin_by_level(model, own, tokenizer)) == ["level0", "inputs"]
    accuracy = evaluate_zero_shot(model, data, tokenizer)
    assert accuracy["count"] == 5 and 0 <= accuracy["micro"] <= 100
    landing = landing_metrics(model, data, tokenizer, [data.class_names[k] for k in data.labels.tolist()])
    assert sum(landing[f"landing_{r}"] for r in ("same", "sibling", "parent", "child", "other")) == pytest.approx(1.0)
    paths = traversal_examples(model, data, tokenizer, count=2, steps=5)
    assert all(SYNTHETIC_ROOT not in step["path"] and step["path"][-1] == "[ROOT]" for step in paths)
