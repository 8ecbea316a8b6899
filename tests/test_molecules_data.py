"""The built-in ``molecules`` dataset (read without RDKit) and users' SMILES conversion (with RDKit)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from vlunlearn.data.chem import ATOM_VOCAB, BOND_VOCAB, read_smiles_file  # importable without RDKit
from vlunlearn.data.graphs import GraphSet
from vlunlearn.data.molecules import load_molecules, molecules_hierarchy, read_molecules, write_molecules
from vlunlearn.data.tokenizer import Tokenizer
from vlunlearn.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"carboxylic acid", "amine", "alcohol", "aldehyde", "halogen", "nitro group"}
SIZES = {"a small molecule.": (1, 12), "a medium-sized molecule.": (12, 25), "a large molecule.": (25, 10**6)}
OTHER_ELEMENT = 12  # the "other" element of the node features (metals, As, Sb, ...)


@pytest.fixture(scope="module")
def splits():
    return load_molecules("train"), load_molecules("test")


def _heavy_atoms(formula: str) -> int:
    """Non-hydrogen atoms of a Hill formula such as ``C27H35N3+2``."""
    return sum(int(n or 1) for element, n in re.findall(r"([A-Z][a-z]?)(\d*)", formula) if element != "H")


def test_sizes_split_and_fixed_content(splits):
    train, test = splits
    assert (len(train), len(test)) == (3938, 932) and train.modality == test.modality == "graph"
    assert 0.78 < len(train) / (len(train) + len(test)) < 0.83
    assert train.ids[:2] == ["molecules/train/00000", "molecules/train/00001"] and test.ids[-1] == "molecules/test/00931"
    assert load_molecules("train").content_hash() == train.content_hash() != test.content_hash()
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_molecules("val")


def test_hierarchy_levels_families_and_classes(splits):
    train, _ = splits
    hierarchy = molecules_hierarchy()
    assert train.hierarchy is hierarchy and hierarchy.levels == ("generic", "family", "class")
    assert hierarchy.root == "molecule" and set(hierarchy.concepts_at("family")) == FAMILIES
    assert len(hierarchy.classes) == 13 and "primary amine" in hierarchy.classes and "aromatic halogen" in hierarchy.classes
    for name in hierarchy.classes:  # "<qualifier> <family>", frequent enough to forget or to classify
        assert name.endswith(" " + hierarchy.parents[name]) and sum(name in c for c in train.concepts) >= 15
    assert "aromatic amine" not in hierarchy.concepts  # a cross-cutting axis of amines is left out
    assert "acid chloride" in hierarchy.notes[0]  # too rare: dropped, and said so


def test_concepts_are_closed_and_labels_follow_them(splits):
    hierarchy = molecules_hierarchy()
    for dataset in splits:
        for concepts, label in zip(dataset.concepts, dataset.labels.tolist()):
            assert hierarchy.root in concepts
            assert all(set(hierarchy.ancestors(c)) <= concepts for c in concepts)
            shown = [k for k, name in enumerate(hierarchy.classes) if name in concepts]
            assert label == (shown[0] if len(shown) == 1 else -1)
        labelled = int((dataset.labels >= 0).sum())
        assert 0.3 < labelled / len(dataset) < 0.5 and set(dataset.labels[dataset.labels >= 0].tolist()) == set(range(13))


def test_captions_levels_tokens_and_uniqueness(splits):
    hierarchy, tokenizer = molecules_hierarchy(), Tokenizer()
    for dataset in splits:
        atoms = dataset.inputs.node_offsets.diff().tolist()
        for (generic, family, specific), concepts, n in zip(dataset.captions, dataset.concepts, atoms):
            low, high = SIZES[generic]
            assert low <= n < high
            families = [f for f in hierarchy.concepts_at("family") if f in concepts]
            assert all(f in family for f in families)
            assert ("no listed functional group" in family) == (not families)
            assert _heavy_atoms(specific.split(",")[0]) == n  # the formula counts the graph's atoms
            assert len(tokenizer.encode(specific)) <= 60
        specific = [c[-1] for c in dataset.captions]
        counts = Counter(specific)
        assert len(counts) / len(specific) > 0.9  # distinct: measured 92.4 % (train) and 98.5 % (test)
        assert sum(n == 1 for n in counts.values()) / len(specific) > 0.82  # only one molecule's: 85.9 % and 97.0 %


def test_graphs_are_valid_and_no_graph_is_in_both_splits(splits):
    train, test = splits
    for dataset in splits:
        graphs = dataset.inputs
        assert graphs.node_vocab == ATOM_VOCAB and graphs.edge_vocab == BOND_VOCAB
        rebuilt = GraphSet.from_arrays(graphs.to_arrays(), graphs.node_vocab, graphs.edge_vocab)  # checks every array
        assert rebuilt.fingerprint() == graphs.fingerprint() and graphs.node_features.dtype == torch.int64
        assert (graphs.edge_offsets.diff() >= graphs.node_offsets.diff() - 1).all()  # one fragment: connected
    keys = train.inputs.graph_keys() + test.inputs.graph_keys()
    graphs = GraphSet.concat([train.inputs, test.inputs])
    for key, n in Counter(keys).items():
        if n > 1:  # only metal complexes that differ in the metal (an "other" element) share a graph
            index = keys.index(key)
            nodes = graphs.node_features[graphs.node_offsets[index]:graphs.node_offsets[index + 1]]
            assert (nodes[:, 0] == OTHER_ELEMENT).any()


def test_reading_needs_no_rdkit():
    code = ("import sys; sys.modules['rdkit'] = None\n"
            "import vlunlearn.data.chem as chem\n"
            "from vlunlearn.data.molecules import load_molecules\n"
            "print(len(load_molecules('test')), chem.ATOM_VOCAB)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "932"


# ---------------------------------------------------------------- with RDKit


def test_bad_and_empty_smiles_give_clear_errors():
    pytest.importorskip("rdkit")
    from vlunlearn.data.chem import molecule_graph, molecules_from_table

    with pytest.raises(DataError, match=r"cannot parse SMILES 'xyz'"):
        molecule_graph("xyz")
    with pytest.raises(DataError, match=r"cannot parse SMILES 'C\(C\)\(C\)\(C\)\(C\)C'"):
        molecule_graph("C(C)(C)(C)(C)C")  # pentavalent carbon
    for empty in ("", "[H][H]"):
        with pytest.raises(DataError, match="has no atoms"):
            molecule_graph(empty)
    with pytest.raises(DataError, match=r"users, row 2: cannot parse SMILES 'C1CC'"):
        molecules_from_table([{"smiles": "CCO"}, {"smiles": "C1CC"}], "users")


def test_features_of_acetic_acid():
    pytest.importorskip("rdkit")
    from vlunlearn.data.chem import molecule_graph

    nodes, edges, bonds = molecule_graph("CC(=O)O")
    # element, degree, charge + 2, hydrogens, aromatic, hybridization (sp, sp2, sp3, ...), in ring
    assert nodes.tolist() == [[0, 1, 2, 3, 0, 2, 0], [0, 3, 2, 0, 0, 1, 0], [2, 1, 2, 0, 0, 1, 0], [2, 1, 2, 1, 0, 1, 0]]
    assert edges.tolist() == [[0, 1], [1, 2], [1, 3]] and bonds[:, 0].tolist() == [0, 1, 0]  # single, double, single
    nodes, _, bonds = molecule_graph("c1ccccc1[N+](=O)[O-]")
    assert nodes[:6, 4].all() and nodes[:6, 6].all() and bonds[0].tolist() == [3, 1, 1]  # aromatic ring bond
    assert nodes[6, 2] == 3 and nodes[8, 2] == 1  # N+ and O-


def test_users_molecules_concepts_labels_and_captions():
    pytest.importorskip("rdkit")
    from vlunlearn.data.chem import molecules_from_table

    rows = [{"smiles": "Nc1ccccc1"}, {"smiles": "Nc1ccc(cc1)[N+](=O)[O-]", "caption": "4-nitroaniline.", "id": "pna"},
            {"smiles": "CCCC"}]
    data = molecules_from_table(rows, "users")
    hierarchy = molecules_hierarchy()
    assert data.ids == ["users/00000", "pna", "users/00002"] and data.hierarchy == hierarchy
    assert data.concepts[0] == {"molecule", "amine", "primary amine"}
    assert data.labels.tolist() == [hierarchy.classes.index("primary amine"), -1, -1]
    assert {"nitro group", "aromatic nitro group", "primary amine"} <= data.concepts[1] and data.concepts[2] == {"molecule"}
    assert data.captions[0] == ("a small molecule.", "a molecule with an amine.",
                                "C6H7N, one aromatic ring: a molecule with a primary aromatic amine; also a benzene ring.")
    assert data.captions[1] == ("a small molecule.", "a molecule with an amine and a nitro group.", "4-nitroaniline.")
    assert data.captions[2][1:] == ("a molecule with no listed functional group.",
                                    "C4H10, no rings, two methyl groups: a molecule with no listed functional group.")


def test_conversion_round_trips_and_is_byte_reproducible(tmp_path):
    pytest.importorskip("rdkit")
    from rdkit import RDConfig

    from vlunlearn.data.chem import molecules_from_table, read_smiles_file

    lines = (Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi").read_text().splitlines()[:20]
    table = tmp_path / "mine.tsv"
    table.write_text("SMILES\tId\tcaption\n" + "".join(f"{line}\t{'nice.' if k == 3 else ''}\n" for k, line in enumerate(lines)))
    rows = read_smiles_file(table)
    assert rows[0] == {"smiles": lines[0].split("\t")[0], "id": lines[0].split("\t")[1]} and rows[3]["caption"] == "nice."
    first, second = molecules_from_table(rows, "mine"), molecules_from_table(rows, "mine")
    write_molecules(first, tmp_path / "a.npz")
    write_molecules(second, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = read_molecules(tmp_path / "a.npz")
    assert back.content_hash() == first.content_hash() and back.hierarchy == first.hierarchy
    assert back.inputs.fingerprint() == first.inputs.fingerprint() and back.captions[3][-1] == "nice."
    with pytest.raises(DataError, match="already exists"):
        write_molecules(first, tmp_path / "a.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "mine.tsv"]  # no temporary file left


def test_smiles_files_and_their_errors(tmp_path):
    smi = tmp_path / "mine.smi"
    smi.write_text("SMILES Name\n# a comment\nCCO ethanol one\n\nc1ccccc1\n")
    assert read_smiles_file(smi) == [{"smiles": "CCO", "id": "ethanol one"}, {"smiles": "c1ccccc1"}]
    csv = tmp_path / "mine.csv"
    csv.write_text("id,text\n1,CCO\n")
    with pytest.raises(DataError, match=r"mine.csv, line 1: expected a header with a smiles column"):
        read_smiles_file(csv)
    csv.write_text("smiles,caption\nCCO,an alcohol.,extra\n")
    with pytest.raises(DataError, match=r"line 2: 3 fields, but the header has 2"):
        read_smiles_file(csv)
    with pytest.raises(DataError, match="unknown SMILES file format '.sdf'"):
        (tmp_path / "x.sdf").write_text("")
        read_smiles_file(tmp_path / "x.sdf")


def test_the_shipped_asset_matches_the_current_code():
    pytest.importorskip("rdkit")
    from vlunlearn.data.chem import molecules_from_table

    spec = importlib.util.spec_from_file_location("build_molecules", ROOT / "scripts" / "build_molecules.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    kept, stats = build.read_source(build.SOURCE)
    assert len(kept) == 3938 + 932 and stats["dropped: unparsable or without atoms"] == 8
    test_smiles = [smiles for nci_id, smiles in kept if build.is_test(nci_id)][:40]
    rebuilt = molecules_from_table([{"smiles": s, "id": f"molecules/test/{i:05d}"} for i, s in enumerate(test_smiles)],
                                   "molecules/test", molecules_hierarchy())
    shipped = load_molecules("test").subset(range(40))
    assert rebuilt.content_hash() == shipped.content_hash(), "rebuild the asset: python scripts/build_molecules.py"

