"""Mutation score of the fast test suite over ``methods/``, ``geometry/`` and ``evaluation/``.

Each package is mutated by mutmut 3 (``pip install -e '.[mutation]'``) in its own scratch copy
of the repository, ``<scratch>/<package>/`` (git-ignored ``mutants/`` by default), against the
fast test files of that package (``PACKAGES``) only; the work tree is never modified. A scratch
copy is kept between runs: unchanged functions keep their verdicts (mutmut hashes every
function), and surviving mutants are retested every run, so a run after adding tests is short.

Two things are set up in the scratch copy, and nowhere else:

* Function decorators move below the definition (``@d def f`` becomes ``def f`` then
  ``f = d(f)``, what Python evaluates anyway), because mutmut skips every decorated function
  and most of ``geometry/lorentz.py`` and ``evaluation/`` is decorated (``@float32_island``,
  ``@torch.no_grad()``). Nested functions and decorators naming their own function
  (``@x.setter``) are left alone.
* Lines starting with ``raise`` are not mutated (mutmut's ``do_not_mutate_patterns``): their
  mutants only change an error message. Docstrings are never mutated by mutmut.

The score is ``killed / (total - skipped)``; a survivor is either killed by a new test or
explained in ``mutation_equivalent.json`` (its mutated line and a one-line reason), which the
report shows; a verdict whose line no longer matches the mutant reads "unexplained".

    python benchmarks/mutation.py [geometry methods evaluation] [--count-only] [--fresh] [--verdicts-only]

Writes (and merges per package into) ``mutation.json`` and ``mutation.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import libcst as cst
import libcst.matchers as m

from _common import markdown_table, write_results

NAME = "mutation"
ROOT = Path(__file__).resolve().parent.parent
PACKAGES: dict[str, tuple[str, ...]] = {
    "geometry": ("tests/test_geometry.py", "tests/test_losses.py"),
    "methods": (
        "tests/test_method_terms.py", "tests/test_salun_scrub.py", "tests/test_method_scope.py", "tests/test_methods.py",
    ),
    "evaluation": (
        "tests/test_mia.py", "tests/test_retrieval.py", "tests/test_zero_shot.py", "tests/test_forget_quality.py",
        "tests/test_landing.py", "tests/test_hierarchy.py", "tests/test_alignment.py", "tests/test_oracle.py",
        "tests/test_suite.py", "tests/test_memo.py",
    ),
}
"""Package under ``src/vlunlearn/`` -> the fast test files that exercise it."""
SLOW_TESTS = (
    "tests/test_zero_shot.py::test_pretrained_tiny_clip_is_far_above_chance_on_digits",
    "tests/test_mia.py::test_a_model_trained_on_its_members_is_detected_and_one_that_never_saw_them_is_not",
    "tests/test_methods.py::test_every_method_runs_with_finite_losses",
)
"""Deselected: they train real models (10 s to minutes each, run again for every surviving mutant);
the last is 18 short unlearning runs whose checks (finite, something changed) the term tests subsume."""
PYTEST_ARGS = ("-p", "no:cacheprovider", "-x", "-q", "--hypothesis-seed=0")
MESSAGE_ONLY = r"^\s*raise\b"
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VLUNLEARN_TEST_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONHASHSEED": "0"}
EQUIVALENT_FILE = ROOT / "benchmarks/mutation_equivalent.json"
"""Surviving mutant -> [its mutated line, stripped, as ``mutmut show`` prints it; why no test can kill it]."""


class _Undecorate(cst.CSTTransformer):
    """Rewrite ``@d1 @d2 def f`` as ``def f`` then ``f = d1(d2(f))`` for functions at module and
    class level, except ``@staticmethod``/``@classmethod`` alone (mutmut handles those) and
    decorators that name ``f``."""

    def __init__(self) -> None:
        self.depth = 0

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.depth += 1
        return True

    def leave_FunctionDef(
        self, original: cst.FunctionDef, updated: cst.FunctionDef
    ) -> cst.FunctionDef | cst.FlattenSentinel[cst.BaseStatement]:
        self.depth -= 1
        decorators = [d.decorator for d in updated.decorators]
        name = updated.name.value
        method_kind = len(decorators) == 1 and m.matches(decorators[0], m.Name("staticmethod") | m.Name("classmethod"))
        if self.depth or not decorators or method_kind or any(m.findall(d, m.Name(name)) for d in decorators):
            return updated
        wrapped: cst.BaseExpression = cst.Name(name)
        for decorator in reversed(decorators):
            wrapped = cst.Call(func=decorator, args=[cst.Arg(wrapped)])
        assign = cst.SimpleStatementLine([cst.Assign([cst.AssignTarget(cst.Name(name))], wrapped)])
        return cst.FlattenSentinel([updated.with_changes(decorators=[]), assign])


def undecorate(source: str) -> str:
    """``source`` with its module- and class-level function decorators applied after the definitions."""
    return cst.parse_module(source).visit(_Undecorate()).code


def mutmut_config(package: str) -> str:
    """The ``[tool.mutmut]`` table for mutating ``src/vlunlearn/<package>/`` with its tests."""
    deselect = [arg for test in SLOW_TESTS for arg in ("--deselect", test)]
    table = {
        "source_paths": ["src/vlunlearn"],
        "only_mutate": [f"src/vlunlearn/{package}/*"],
        "pytest_add_cli_args_test_selection": list(PACKAGES[package]),
        "pytest_add_cli_args": [*PYTEST_ARGS, *deselect],
        "do_not_mutate_patterns": [MESSAGE_ONLY],
        "use_git_change_detection": False,
    }
    return "\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _mirror(source: Path, target: Path, rewrite: set[Path]) -> None:
    """Make the tree ``target`` equal to ``source`` (no ``__pycache__``), touching only changed
    files; files in ``rewrite`` go through :func:`undecorate`, the others keep their mtime."""
    files = {p.relative_to(source) for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for stale in [p for p in target.rglob("*") if p.is_file() and "__pycache__" not in p.parts]:
        if stale.relative_to(target) not in files:
            stale.unlink()
    for relative in sorted(files):
        original, copy = source / relative, target / relative
        if original in rewrite:
            _write_if_changed(copy, undecorate(original.read_text()))
        elif not copy.exists() or copy.read_bytes() != original.read_bytes():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(original, copy)


def prepare(package: str, scratch: Path) -> Path:
    """Create or update the scratch copy for ``package``; returns its root."""
    root = scratch / package
    rewrite = set((ROOT / "src/vlunlearn" / package).rglob("*.py"))
    _mirror(ROOT / "src", root / "src", rewrite)
    _mirror(ROOT / "tests", root / "tests", set())
    _write_if_changed(root / "pyproject.toml", (ROOT / "pyproject.toml").read_text() + mutmut_config(package))
    return root


def _mutmut(root: Path, *args: str, check: bool = True) -> str:
    """Run the venv's ``mutmut`` in ``root`` single-threaded; returns its stdout."""
    command = [str(Path(sys.executable).parent / "mutmut"), *args]
    result = subprocess.run(command, cwd=root, env={**os.environ, **ENV}, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed in {root}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def statuses(root: Path) -> dict[str, str]:
    """Mutant name -> mutmut's status (``killed``, ``survived``, ``no tests``, ``timeout``, ...)."""
    lines = _mutmut(root, "results", "--all", "true").splitlines()
    return dict(line.strip().rsplit(": ", 1) for line in lines if ": " in line)


def reset_survivors(root: Path) -> None:
    """Forget the verdicts of mutants that were not killed, so this run retests them."""
    for meta in (root / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        codes.update({key: None for key, code in codes.items() if code not in (1, 3, 34)})
        meta.write_text(json.dumps(data, indent=4))


def mutated_line(root: Path, name: str) -> str:
    """The ``+`` line of ``mutmut show name``: the mutated source line, stripped."""
    diff = _mutmut(root, "show", name).splitlines()
    return " | ".join(line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++"))


def summarize(root: Path, status_by_name: dict[str, str]) -> dict:
    """Counts, score and the not-killed mutants (with their mutated lines and verdicts)."""
    counts = Counter(status_by_name.values())
    total, skipped = len(status_by_name), counts["skipped"]
    not_killed = {
        name: {"status": status, "mutated": mutated_line(root, name)}
        for name, status in sorted(status_by_name.items()) if status not in ("killed", "skipped")
    }
    apply_verdicts(not_killed)
    return {
        "total": total, "killed": counts["killed"], "survived": counts["survived"], "timeout": counts["timeout"],
        "skipped": skipped, "no_tests": counts["no tests"],
        "other": total - sum(counts[s] for s in ("killed", "survived", "timeout", "skipped", "no tests")),
        "score": counts["killed"] / (total - skipped) if total > skipped else None,
        "survivors": [name for name, entry in not_killed.items() if entry["status"] == "survived"],
        "not_killed": not_killed,
    }


def apply_verdicts(not_killed: dict[str, dict]) -> None:
    """Set each not-killed mutant's verdict from ``EQUIVALENT_FILE`` ("unexplained" unless its line matches)."""
    equivalent = json.loads(EQUIVALENT_FILE.read_text())
    for name, entry in not_killed.items():
        known = equivalent.get(name)
        entry["verdict"] = known[1] if known and known[0] == entry["mutated"] else "unexplained"


def run(package: str, scratch: Path, fresh: bool, children: int = 1) -> dict:
    """Mutate ``package`` against its tests; returns its summary with tests and wall seconds."""
    if fresh:
        shutil.rmtree(scratch / package, ignore_errors=True)
    root = prepare(package, scratch)
    reset_survivors(root)
    start = time.perf_counter()
    _mutmut(root, "run", "--max-children", str(children))
    seconds = time.perf_counter() - start
    return {"tests": list(PACKAGES[package]), "deselected": list(SLOW_TESTS), "seconds": round(seconds, 1),
            **summarize(root, statuses(root))}


def count(package: str, scratch: Path) -> int:
    """How many mutants mutmut generates for ``package``, without running any test."""
    from mutmut.configuration import reset_config
    from mutmut.mutation.file_mutation import mutate_file_contents

    root = prepare(package, scratch)
    previous = Path.cwd()
    os.chdir(root)
    try:
        reset_config()
        files = sorted(Path(f"src/vlunlearn/{package}").rglob("*.py"))
        return sum(len(mutate_file_contents(str(f), f.read_text()).mutant_names) for f in files)
    finally:
        os.chdir(previous)


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def report(packages: dict[str, dict]) -> str:
    """The Markdown report: one row per package, then every mutant not killed with its verdict."""
    header = ["package", "mutants", "killed", "survived", "timeout", "no tests", "skipped", "score", "last run (min)"]
    rows = [[name, p["total"], p["killed"], p["survived"], p["timeout"], p["no_tests"], p["skipped"],
             "" if p["score"] is None else f"{100 * p['score']:.1f}%", f"{p['seconds'] / 60:.1f}"]
            for name, p in packages.items() if "score" in p]
    lines = ["# Mutation score (mutmut)\n", "Score = killed / (mutants - skipped); lines starting with `raise`",
             "(error messages) and docstrings are not mutated; decorated functions are. Each package runs against",
             "its own fast tests only. See `benchmarks/mutation.py`.\n",
             markdown_table(header, rows, 1)]
    for name, p in packages.items():
        if p.get("not_killed"):
            lines.append(f"\n## Not killed in {name}\n")
            cells = [[f"`{key}`", entry["status"], f"`{_cell(entry['mutated'])}`", _cell(entry["verdict"])]
                     for key, entry in p["not_killed"].items()]
            lines.append(markdown_table(["mutant", "status", "mutated line", "verdict"], cells, 4))
    counts = {name: p["count"] for name, p in packages.items() if "count" in p and "score" not in p}
    if counts:
        lines.append("\nNot run yet (mutants generated): " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packages", nargs="*", default=list(PACKAGES), help=f"any of {', '.join(PACKAGES)}")
    parser.add_argument("--scratch", type=Path, default=ROOT / "mutants", help="where the scratch copies live")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--count-only", action="store_true", help="only count the mutants of each package")
    parser.add_argument("--fresh", action="store_true", help="delete the scratch copies first")
    parser.add_argument("--children", type=int, default=1, help="mutants tested at once (one thread each)")
    parser.add_argument("--verdicts-only", action="store_true",
                        help="only re-read the verdicts of the stored results (after editing the equivalents file)")
    args = parser.parse_args()
    if unknown := set(args.packages) - set(PACKAGES):
        parser.error(f"unknown packages {sorted(unknown)}; choose from {list(PACKAGES)}")

    json_path = args.out / f"{NAME}.json"
    packages = json.loads(json_path.read_text())["packages"] if json_path.exists() else {}
    for package in args.packages:
        if args.verdicts_only:
            apply_verdicts(packages[package].get("not_killed", {}))
        elif args.count_only:
            packages[package] = {**packages.get(package, {}), "count": count(package, args.scratch)}
        else:
            packages[package] = run(package, args.scratch, args.fresh, args.children)
            print(f"{package}: {packages[package]['killed']}/{packages[package]['total']} killed", flush=True)
    payload = {"mutmut": metadata.version("mutmut"), "pytest_args": list(PYTEST_ARGS), "packages": packages}
    write_results(json_path, args.out / f"{NAME}.md", payload, report(packages))


if __name__ == "__main__":
    main()
