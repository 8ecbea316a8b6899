"""Users' own image-text data: a folder of images and a CSV or JSONL annotation file.

CSV (with a header row): columns ``path`` and ``caption``, optional ``concepts``
(names separated by ``;``) and optional ``id``::

    path,caption,concepts
    cats/001.jpg,a cat asleep on a sofa,cat;animal

JSONL (one object per line): keys ``path`` and ``caption``, optional ``concepts`` (a list of
strings) and optional ``id``::

    {"path": "cats/001.jpg", "caption": "a cat asleep on a sofa", "concepts": ["cat", "animal"]}

Image paths are relative to ``root`` (absolute paths are used as they are). An item's id is
its ``id`` field, or else its path as written; ids must be unique, so an image that appears
in several rows (several captions) needs an ``id`` column.

Concepts may be concept paths, generic -> specific (``number/odd/seven``), and a hierarchy file
(child -> parent) may come with the data; without either, the hierarchy the concept lists imply
is used. See :mod:`vlunlearn.data.concept_tree` for how classes and labels follow.
"""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from vlunlearn.data.concept_tree import concept_labels
from vlunlearn.data.datasets import PairDataset
from vlunlearn.data.hierarchy import ConceptHierarchy
from vlunlearn.data.streaming import ImageFiles, ImageSource
from vlunlearn.errors import DataError

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def load_image_text_folder(
    root: str | Path,
    annotations: str | Path,
    image_size: int,
    name: str | None = None,
    channels: int = 3,
    stream: bool = False,
    workers: int = 0,
    hierarchy: str | Path | ConceptHierarchy | None = None,
    level_captions: bool = False,
) -> PairDataset:
    """Read image-text pairs described by an annotation file.

    Args:
        root: the folder that image paths are relative to.
        annotations: the CSV or JSONL file (absolute, relative to the working directory, or
            relative to ``root``).
        image_size: images are converted to RGB, resized so that the shorter side is
            ``image_size`` (bicubic) and centre-cropped to ``image_size`` x ``image_size``.
        name: the dataset's name (default: the annotation file's stem).
        channels: 3 (RGB) or 1 (greyscale), the input channels of the model.
        stream: keep the images on disk and decode each batch when it is needed
            (:class:`~vlunlearn.data.streaming.ImageFiles`); every file is still checked now.
        workers: processes that decode streamed batches (0: this process).
        hierarchy: a child -> parent file (CSV/TSV ``child,parent``, JSON or YAML), or the
            ConceptHierarchy to put the items on (the training data's, for test data); None:
            concept paths in the data, else the hierarchy its concept lists imply.
        level_captions: give each item with a class its hierarchy's captions, generic ->
            specific, before its own caption, which stays last (the canonical one).

    Returns:
        A ``PairDataset`` with uint8 ``(N, channels, image_size, image_size)`` images and its
        captions. With a hierarchy (paths, a file, or an implied tree of two levels or more),
        ``class_names`` are its leaves, concepts are closed upward and labels are the most
        specific class (-1 when that is not one class). Without one, ``class_names`` are the
        sorted distinct concepts and an item's label is its concept when it has exactly one.

    Raises:
        DataError: naming the file (and line) of a missing annotation file, a malformed row,
            a missing or unreadable image, a repeated id, or a concept hierarchy that cannot be
            built (see :mod:`vlunlearn.data.concept_tree`).
    """
    if int(image_size) < 1:
        raise DataError(f"image_size must be a positive integer, not {image_size!r}")
    root = Path(root)
    path = _find_annotations(root, Path(annotations))
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        rows = _read_csv(path)
    elif suffix in JSONL_SUFFIXES:
        rows = _read_jsonl(path)
    else:
        raise DataError(f"{path}: unknown annotation format {suffix!r}; use .csv or .jsonl")
    if not rows:
        raise DataError(f"{path}: no annotations")

    first_line: dict[str, int] = {}
    for line, record in rows:
        if record["id"] in first_line:
            raise DataError(
                f"{path}, line {line}: id {record['id']!r} repeats line {first_line[record['id']]}; "
                "ids must be unique (add an 'id' column to give each row its own id)"
            )
        first_line[record["id"]] = line

    where = [f"{path}, line {line}" for line, _ in rows]
    tree = concept_labels([record["concepts"] for _, record in rows], where, name or path.stem, hierarchy, str(path))
    images = _images([(_resolve(root, record["path"]), w) for (_, record), w in zip(rows, where)], int(image_size), channels,
                     stream, workers)
    return PairDataset(
        name=name or path.stem,
        inputs=images,
        captions=tree.captions([record["caption"] for _, record in rows], level_captions),
        concepts=tree.concepts,
        labels=tree.labels,
        ids=[record["id"] for _, record in rows],
        class_names=tree.class_names,
        hierarchy=tree.hierarchy,
    )


def _resolve(root: Path, raw_path: str) -> Path:
    file = Path(raw_path)
    return file if file.is_absolute() else root / file


def _find_annotations(root: Path, annotations: Path) -> Path:
    candidates = [annotations] if annotations.is_absolute() else [annotations, root / annotations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in candidates)
    raise DataError(f"annotation file not found: {tried}")


def _record(path: Path, line: int, raw_path, caption, concepts, item_id) -> dict:
    where = f"{path}, line {line}"
    if not isinstance(raw_path, str) or not raw_path.strip():
        raise DataError(f"{where}: 'path' must be a non-empty string")
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(f"{where}: 'caption' must be a non-empty string")
    if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
        raise DataError(f"{where}: 'concepts' must be a list of strings")
    if item_id is not None and (not isinstance(item_id, (str, int)) or isinstance(item_id, bool) or not str(item_id).strip()):
        raise DataError(f"{where}: 'id' must be a non-empty string or an integer")
    return {
        "path": raw_path.strip(),
        "caption": caption.strip(),
        "concepts": [c.strip() for c in concepts if c.strip()],
        "id": raw_path.strip() if item_id is None else str(item_id).strip(),
    }


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [column for column in ("path", "caption") if column not in header]
            if missing:
                raise DataError(
                    f"{path}, line 1: the header lacks the column(s) {', '.join(missing)}; "
                    "expected path,caption[,concepts][,id]"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise DataError(f"{path}, line {line}: {len(header) + len(row[None])} fields, but the header has {len(header)} ({','.join(header)})")
                if row["path"] is None or row["caption"] is None:
                    raise DataError(f"{path}, line {line}: too few fields; expected {','.join(header)}")
                concepts = [c for c in (row.get("concepts") or "").split(";")]
                rows.append((line, _record(path, line, row["path"], row["caption"], concepts, row.get("id") or None)))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({error})") from error
    return rows


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error})") from error
    rows = []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            item = json.loads(content)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {line}: not valid JSON ({error.msg})") from error
        if not isinstance(item, dict):
            raise DataError(f"{path}, line {line}: expected a JSON object with keys path, caption[, concepts][, id]")
        missing = [key for key in ("path", "caption") if key not in item]
        if missing:
            raise DataError(f"{path}, line {line}: missing key(s) {', '.join(missing)}")
        rows.append((line, _record(path, line, item["path"], item["caption"], item.get("concepts", []), item.get("id"))))
    return rows


def _check_image(file: Path, where: str) -> None:
    """Refuse a missing file, or one whose header PIL cannot read, naming ``where``."""
    if not file.is_file():
        raise DataError(f"{where}: image file not found: {file}")
    try:
        with Image.open(file):
            pass
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{where}: cannot read image {file}: {error}") from error


def _images(files: list[tuple[Path, str]], size: int, channels: int, stream: bool, workers: int):
    """Checked ``(file, where)`` images: decoded now (uint8 tensor) or streamed (:class:`ImageFiles`)."""
    for file, where in files:
        _check_image(file, where)
    images = ImageFiles([ImageSource(str(file), None, where) for file, where in files], size, channels, workers)
    return images if stream else images.decode()


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_class_folder(
    root: str | Path, image_size: int, channels: int = 3, name: str | None = None, stream: bool = False, workers: int = 0
) -> PairDataset:
    """An ImageFolder-style tree: one sub-folder per class, its images inside (any depth).

    Classes are the sub-folder names in sorted order; each image gets the caption
    ``"a photo of a <class>."``, the concept ``<class>`` and its path relative to ``root`` as
    its id. Images are read (or streamed) like :func:`load_image_text_folder` reads them.

    Raises:
        DataError: ``root`` is not a folder, has no class sub-folders or no images, or an
            image cannot be read (naming the file).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of class sub-folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    files = [
        (label, path)
        for label, class_name in enumerate(classes)
        for path in sorted((root / class_name).rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not files:
        raise DataError(f"{root} has no images with a suffix among {', '.join(IMAGE_SUFFIXES)}")
    images = _images([(path, str(root)) for _, path in files], int(image_size), channels, stream, workers)
    return PairDataset(
        name=name or root.name,
        inputs=images,
        captions=[(f"a photo of a {classes[label]}.",) for label, _ in files],
        concepts=[frozenset({classes[label]}) for label, _ in files],
        labels=torch.tensor([label for label, _ in files], dtype=torch.int64),
        ids=[path.relative_to(root).as_posix() for _, path in files],
        class_names=tuple(classes),
        hierarchy=None,
    )


TAR_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp")


def load_tar_shards(
    shards: list[str | Path],
    image_size: int,
    channels: int = 3,
    workers: int = 0,
    name: str | None = None,
    hierarchy: str | Path | ConceptHierarchy | None = None,
    level_captions: bool = False,
) -> PairDataset:
    """Image-text pairs from WebDataset-style tar shards, streamed (see :mod:`vlunlearn.data.streaming`).

    Members that share a key (the path up to the first dot of the file name) form one item:
    an image (``.jpg``, ``.jpeg``, ``.png``, ``.webp`` or ``.bmp``), and its caption in
    ``.txt`` or in ``.json`` (``{"caption": ..., "concepts": [...]}``). The key is the item's
    id. Only the tar headers and the small text members are read here; images are decoded
    when a batch needs them. Concepts, ``hierarchy`` and ``level_captions`` work as in
    :func:`load_image_text_folder`.

    Raises:
        DataError: a shard that is missing or not a tar file, an item without an image or a
            caption (naming shard and key), no items at all, or a concept hierarchy that
            cannot be built.
    """
    items: dict[str, dict] = {}
    for shard in map(Path, shards):
        try:
            with tarfile.open(shard) as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    folder, _, filename = member.name.rpartition("/")
                    stem, _, suffix = filename.partition(".")
                    key = f"{folder}/{stem}" if folder else stem
                    item = items.setdefault(key, {"shard": str(shard)})
                    suffix = suffix.lower()
                    if suffix in TAR_IMAGE_SUFFIXES:
                        item["image"] = member.name
                    elif suffix in ("txt", "json"):
                        item[suffix] = archive.extractfile(member).read().decode("utf-8")
        except FileNotFoundError:
            raise DataError(f"tar shard not found: {shard}") from None
        except (tarfile.TarError, UnicodeDecodeError) as error:
            raise DataError(f"{shard}: not a readable tar shard of images and UTF-8 captions ({error})") from None
    if not items:
        raise DataError(f"no items in {', '.join(map(str, shards)) or 'no shards'}")
    sources, captions, concepts, where = [], [], [], []
    for key, item in items.items():
        place = f"{item['shard']}, item {key!r}"
        meta = json.loads(item["json"]) if "json" in item else {}
        caption = meta.get("caption") if isinstance(meta, dict) else None
        caption = item.get("txt", caption)
        if "image" not in item or not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{place}: every item needs an image and a caption (.txt, or 'caption' in .json)")
        sources.append(ImageSource(item["shard"], item["image"], place))
        captions.append(caption.strip())
        concepts.append((meta.get("concepts") or []) if isinstance(meta, dict) else [])
        where.append(place)
    name = name or Path(shards[0]).stem
    tree = concept_labels(concepts, where, name, hierarchy, ", ".join(map(str, shards)))
    return PairDataset(
        name=name,
        inputs=ImageFiles(sources, image_size, channels, workers),
        captions=tree.captions(captions, level_captions),
        concepts=tree.concepts,
        labels=tree.labels,
        ids=list(items),
        class_names=tree.class_names,
        hierarchy=tree.hierarchy,
    )
