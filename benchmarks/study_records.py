"""Pack a study folder's cell records into one gzipped JSONL file (what benchmarks/results keeps of a
study: the records, not the models), or unpack such a file into a folder that
``vlunlearn.study.report.write_study_report`` reads, to redraw the report from the committed records.

    python benchmarks/study_records.py pack runs/hac benchmarks/results/study-hac
    python benchmarks/study_records.py unpack benchmarks/results/study-hac/records.jsonl.gz /tmp/hac
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

from vlunlearn.study.report import write_study_report

RECORDS = "records.jsonl.gz"
KEPT = ("study.json", "report.md", "summary.json")


def pack(study: Path, out: Path) -> int:
    """Write ``out/records.jsonl.gz`` (one record per line, by cell id), the study's spec, report and figures."""
    records = sorted((study / "cells").glob("*/record.json"))
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / RECORDS, "wt", encoding="utf-8", compresslevel=9) as handle:
        for path in records:
            handle.write(json.dumps(json.loads(path.read_text(encoding="utf-8")), separators=(",", ":")) + "\n")
    for name in KEPT:
        shutil.copy2(study / name, out / name)
    shutil.copytree(study / "figures", out / "figures", dirs_exist_ok=True)
    return len(records)


def unpack(records: Path, out: Path) -> Path:
    """Write every record to ``out/cells/<id>/record.json`` and redraw the report there."""
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new folder")
    with gzip.open(records, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            folder = out / "cells" / record["cell"]
            folder.mkdir(parents=True)
            (folder / "record.json").write_text(json.dumps(record), encoding="utf-8")
    study = records.parent / "study.json"
    if study.is_file():
        shutil.copy2(study, out / "study.json")
    return write_study_report(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="study folder -> records.jsonl.gz + report, summary, figures")
    packing.add_argument("study", type=Path)
    packing.add_argument("out", type=Path)
    unpacking = commands.add_parser("unpack", help="records.jsonl.gz -> a study folder with its report redrawn")
    unpacking.add_argument("records", type=Path)
    unpacking.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        print(f"{pack(args.study, args.out)} records -> {args.out / RECORDS}")
    else:
        print(f"report: {unpack(args.records, args.out)}")


if __name__ == "__main__":
    main()
