"""Build the built-in ``molecules`` asset from the NCI sample and the functional groups in the RDKit wheel.

    python scripts/build_molecules.py [--out src/vlunlearn/data/assets/molecules.npz]

Reads ``rdkit/Data/NCI/first_5K.smi`` ("SMILES<TAB>NCI id" lines), keeps each molecule's largest
fragment, leaves out molecules RDKit cannot parse and repeats of an earlier graph, splits them by
a hash of the NCI id (about 80 / 20), drops functional-group classes with fewer than
``chem.MIN_CLASS_COUNT`` training molecules, and writes both splits with their captions and
hierarchy (see :mod:`vlunlearn.data.molecules`). The output is the same, byte for byte, on
every run with the same RDKit. Prints a summary.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from pathlib import Path

from rdkit import Chem, RDConfig

from vlunlearn.data import chem
from vlunlearn.data.datasets import PairDataset
from vlunlearn.data.molecules import write_molecules
from vlunlearn.data.tokenizer import Tokenizer
from vlunlearn.errors import DataError

SOURCE = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
ASSET = Path(__file__).resolve().parents[1] / "src" / "vlunlearn" / "data" / "assets" / "molecules.npz"
TEST_PERCENT = 20
SPLIT_SALT = "vlunlearn/molecules/split"  # fixed: the split never moves


def read_source(path: Path) -> tuple[list[tuple[str, str]], Counter]:
    """(NCI id, canonical SMILES of the largest fragment) per kept molecule, and what was left out."""
    kept, seen, stats = [], set(), Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        stats["lines"] += 1
        smiles, _, nci_id = line.partition("\t")
        try:
            mol = chem.parse_smiles(smiles.strip())
        except DataError:
            stats["dropped: unparsable or without atoms"] += 1
            continue
        fragments = Chem.GetMolFrags(mol, asMols=True)
        if len(fragments) > 1:
            stats["largest fragment kept (salts, mixtures)"] += 1
            mol = max(fragments, key=lambda fragment: fragment.GetNumHeavyAtoms())
        graph_key = Chem.MolToSmiles(mol, isomericSmiles=False)
        if graph_key in seen:
            stats["dropped: repeats an earlier graph"] += 1
            continue
        seen.add(graph_key)
        kept.append((nci_id.strip(), Chem.MolToSmiles(mol)))
    return kept, stats


def is_test(nci_id: str) -> bool:
    digest = hashlib.blake2b(f"{SPLIT_SALT}/{nci_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100 < TEST_PERCENT


def class_counts(smiles: list[str]) -> Counter:
    """Molecules per class of every RDKit group (before rare ones are dropped)."""
    candidate = chem.candidate_hierarchy()
    counts = Counter()
    for text in smiles:
        shown = chem.concepts_of(chem.find_groups(chem.parse_smiles(text), candidate), candidate)
        counts.update(c for c in shown if c in candidate.classes)
    return counts


def summary(train: PairDataset, test: PairDataset, stats: Counter, counts: Counter, dropped: tuple[str, ...],
            out: Path) -> str:
    hierarchy, tokenizer = train.hierarchy, Tokenizer()
    lines = [f"{key}: {value}" for key, value in stats.items()]
    lines.append(f"kept {len(train) + len(test)}: train {len(train)}, test {len(test)}")
    lines.append(f"classes dropped (fewer than {chem.MIN_CLASS_COUNT} training molecules): "
                 + ", ".join(f"{c} ({counts.get(c, 0)})" for c in dropped if c in chem.candidate_hierarchy().classes))
    lines.append("families dropped (no class left): "
                 + ", ".join(c for c in dropped if c not in chem.candidate_hierarchy().classes))
    lines.append("classes (train / test molecules showing it; labelled: showing only it):")
    for family in hierarchy.concepts_at("family"):
        lines.append(f"  {family}: {sum(family in c for c in train.concepts)} / {sum(family in c for c in test.concepts)}")
        for name in hierarchy.classes_under(family):
            k = hierarchy.classes.index(name)
            lines.append(f"    {name}: {sum(name in c for c in train.concepts)} / {sum(name in c for c in test.concepts)}"
                         f" (labelled {int((train.labels == k).sum())} / {int((test.labels == k).sum())})")
    for dataset in (train, test):
        none = sum(len(c) == 1 for c in dataset.concepts)
        lines.append(f"{dataset.name}: labelled {int((dataset.labels >= 0).sum())}, without a listed group {none}")
    specific = [c[-1] for c in train.captions + test.captions]
    repeats = Counter(specific)
    lines.append(f"specific captions: {len(repeats)} distinct of {len(specific)} ({len(repeats) / len(specific):.1%}); "
                 f"unique to one molecule: {sum(n == 1 for n in repeats.values()) / len(specific):.1%}")
    for level, name in enumerate(hierarchy.levels):
        longest = max(len(tokenizer.encode(c[level])) for c in train.captions + test.captions)
        lines.append(f"max tokens ({name} captions, SOT and EOT included): {longest}")
    lines.append(f"example: {train.captions[0]}")
    data = out.read_bytes()
    lines.append(f"wrote {out} ({len(data) / 1e6:.2f} MB, sha256 {hashlib.sha256(data).hexdigest()[:16]})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSET, help="the .npz to write (replaced if it exists)")
    args = parser.parse_args()
    kept, stats = read_source(SOURCE)
    rows = {split: [s for nci_id, s in kept if is_test(nci_id) == (split == "test")] for split in ("train", "test")}
    counts = class_counts(rows["train"])
    hierarchy, dropped = chem.prune_hierarchy(chem.candidate_hierarchy(), counts)
    datasets = {
        split: chem.molecules_from_table(
            [{"smiles": s, "id": f"molecules/{split}/{i:05d}"} for i, s in enumerate(smiles)], f"molecules/{split}", hierarchy)
        for split, smiles in rows.items()
    }
    write_molecules(datasets, args.out, overwrite=True)
    print(summary(datasets["train"], datasets["test"], stats, counts, dropped, args.out))


if __name__ == "__main__":
    main()
