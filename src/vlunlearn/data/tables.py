"""Users' CSV and TSV tables with a header: the rows as dicts, each with where it was written."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from vlunlearn.errors import DataError


def header_rows(path: Path, text: str, delimiter: str, required: tuple[str, ...],
                header_needed: str) -> list[tuple[str, dict[str, str]]]:
    """``(where, {column: cell})`` of every non-blank row of ``text`` after its header.

    Column names are stripped and lower-cased; cells are as written. ``where`` is
    ``"<path>, line <n>"``. Raises :class:`DataError` naming the line for a header without the
    ``required`` columns (the message says the header needs ``header_needed``), a row with
    another number of fields than the header, or text the csv module cannot read.
    """
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows, header = [], None
    try:
        for cells in reader:
            where = f"{path}, line {reader.line_num}"
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in cells]
                if not all(column in header for column in required):
                    raise DataError(f"{where}: expected a header with {header_needed}, not {delimiter.join(cells)!r}")
            elif len(cells) != len(header):
                raise DataError(f"{where}: {len(cells)} fields, but the header has {len(header)}")
            else:
                rows.append((where, dict(zip(header, cells))))
    except csv.Error as error:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise DataError(f"{path}, line {reader.line_num}: not a readable {kind} file ({error})") from error
    return rows
