"""Captions of molecules, and the caption and prompt templates of the ``molecules`` hierarchy.

Each molecule gets a generic caption (its size), a family caption (the families found) and a
specific caption: the formula, rings and methyl groups, the groups found (with their refinements
and counts) and ``OTHER_GROUPS``, with detail dropped until it fits ``MAX_CAPTION_TOKENS`` tokens.
RDKit is optional: it is imported inside the functions that need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlunlearn.data.hierarchy import ConceptHierarchy, fill
from vlunlearn.data.tokenizer import Tokenizer

if TYPE_CHECKING:  # chem imports this module: no import at run time
    from vlunlearn.data.chem import Found

__all__ = ["CAPTION_TEMPLATES", "MAX_CAPTION_TOKENS", "NO_GROUP", "OTHER_GROUPS", "PROMPT_TEMPLATES", "SIZES",
           "molecule_captions"]

SIZES = ((12, "small"), (25, "medium-sized"), (None, "large"))  # fewer heavy atoms than the bound
CAPTION_TEMPLATES = {
    "generic": tuple(f"a {size} {{}}." for _, size in SIZES),
    "family": ("a molecule with a {}.", "a compound containing a {}."),
    "class": ("a molecule with a {}.", "a compound containing a {}."),
}
PROMPT_TEMPLATES = ("a molecule with a {}.", "a compound containing a {}.", "a chemical structure with a {}.",
                    "a molecule that has a {}.")
MAX_CAPTION_TOKENS = 60  # SOT and EOT included
NO_GROUP = "no listed functional group"
# Other groups that specific captions name after "also" (no concepts): functions of
# rdkit.Chem.Fragments (RDKit's FragmentDescriptors.csv) that overlap no family. (Not ureas: `fill`
# would write "an urea"; their amide bonds are named.)
OTHER_GROUPS = (
    ("fr_ketone", "ketone"), ("fr_ether", "ether"), ("fr_ester", "ester"), ("fr_amide", "amide"), ("fr_nitrile", "nitrile"),
    ("fr_Imine", "imine"), ("fr_azo", "azo group"), ("fr_hdrzine", "hydrazine"), ("fr_hdrzone", "hydrazone"),
    ("fr_oxime", "oxime"), ("fr_sulfide", "thioether"), ("fr_SH", "thiol"), ("fr_sulfone", "sulfone"),
    ("fr_sulfonamd", "sulfonamide"), ("fr_C_S", "thiocarbonyl"), ("fr_lactone", "lactone"),
    ("fr_epoxide", "epoxide"), ("fr_phos_acid", "phosphoric acid"), ("fr_phos_ester", "phosphoric ester"),
    ("fr_benzene", "benzene ring"), ("fr_pyridine", "pyridine ring"), ("fr_furan", "furan ring"),
    ("fr_thiophene", "thiophene ring"), ("fr_thiazole", "thiazole ring"), ("fr_imidazole", "imidazole ring"),
    ("fr_piperdine", "piperidine ring"), ("fr_piperzine", "piperazine ring"), ("fr_morpholine", "morpholine ring"))
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _number(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _counted(name: str, n: int) -> str:
    return fill("a {}", name) if n == 1 else f"{_number(n)} {name}s"


def _rings(total: int, aromatic: int) -> str:
    if total <= 1:
        return "no rings" if total == 0 else "one aromatic ring" if aromatic else "one ring"
    share = {0: "none", total: "both" if total == 2 else "all"}.get(aromatic, _number(aromatic))
    return f"{_number(total)} rings, {share} aromatic"


def _group_phrases(found: tuple[Found, ...], detail: int) -> list[str]:
    """Counted names of the groups found: refinements (detail 2), classes (1) or families (0)."""
    named = []
    for family in found:
        for group in family.parts if detail and family.parts else (family,):
            named.extend(group.parts if detail == 2 and group.parts else (group,))
    return [_counted(g.concept, g.count) for g in named]


def _outline(mol) -> str:
    """Formula, rings and methyl groups: ``"C8H9NO2, one aromatic ring, two methyl groups"``."""
    from rdkit.Chem import rdMolDescriptors

    rings = _rings(rdMolDescriptors.CalcNumRings(mol), rdMolDescriptors.CalcNumAromaticRings(mol))
    methyls = sum(a.GetAtomicNum() == 6 and not a.GetIsAromatic() and a.GetTotalNumHs() == 3 for a in mol.GetAtoms())
    return f"{rdMolDescriptors.CalcMolFormula(mol)}, {rings}" + (
        f", {_number(methyls)} methyl group{'s' if methyls > 1 else ''}" if methyls else "")


def _other_groups(mol) -> str:
    from rdkit.Chem import Fragments

    named = [_counted(name, n) for function, name in OTHER_GROUPS if (n := getattr(Fragments, function)(mol))]
    return _join(named) if named else ""


def molecule_captions(mol, found: tuple[Found, ...], hierarchy: ConceptHierarchy,
                      tokenizer: Tokenizer | None = None) -> tuple[str, str, str]:
    """Generic, family and specific captions of an RDKit molecule with the groups ``found``.

    The specific caption names the formula, rings and methyl groups, the groups found (with
    their refinements and counts) and ``OTHER_GROUPS``; it drops detail until it fits
    ``MAX_CAPTION_TOKENS`` tokens of ``tokenizer``.
    """
    tokenizer = Tokenizer() if tokenizer is None else tokenizer
    molecule = fill("a {}", hierarchy.root)
    heavy = mol.GetNumHeavyAtoms()
    generic = f"a {next(size for bound, size in SIZES if bound is None or heavy < bound)} {hierarchy.root}."
    families = _join([fill("a {}", f.concept) for f in found]) if found else NO_GROUP
    outline, others = _outline(mol), _other_groups(mol)
    candidates = [
        f"{outline}: {molecule} with {_join(_group_phrases(found, detail)) if found else NO_GROUP}"
        + (f"; also {others}." if others and also else ".")
        for detail, also in ((2, True), (1, True), (2, False), (1, False), (0, False))
    ]
    specific = next((c for c in candidates if len(tokenizer.encode(c)) <= MAX_CAPTION_TOKENS), f"{outline}.")
    return generic, f"{molecule} with {families}.", specific
