"""Training and evaluation data: img2dataset-style Parquet (``key, url, caption, jpg``) and a
capfilt round's ``cleaned/`` output, from local paths or object-store URLs (``s3://`` and the
other schemes pyarrow's filesystems know; S3 endpoint and credentials from the usual AWS_*
environment variables).

A round is read through its commit records (``_manifest.json`` -> ``_commits/{shard}.json`` ->
``cleaned/part-...parquet``), never through a raw listing, so files of losing attempts are never
read. Cleaned rows reference their image by source file + row index; images are read from the
source files.
"""
from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image


@dataclass
class Example:
    image: bytes
    text: str
    key: str = ""
    gt_caption: str | None = None
    gt_match: bool | None = None
    noise: str | None = None  # the benchmark's noise kind of a non-matching text, when known


@dataclass
class Columns:
    key: str = "key"
    caption: str = "caption"
    image: str = "jpg"


def _fs(url: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in url:
        return pafs.LocalFileSystem(), str(PurePosixPath(url)) if not url.startswith("/") else url
    if url.startswith("s3://"):
        import os

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {}
        if endpoint:
            scheme, _, rest = endpoint.partition("://")
            kwargs = {"endpoint_override": rest or scheme, "scheme": scheme if rest else "https"}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), url[len("s3://") :]
    return pafs.FileSystem.from_uri(url)


def parquet_files(url: str) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files at ``url`` (a file, or every ``*.parquet`` under a prefix, sorted)."""
    fs, path = _fs(url)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return fs, [path]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{url}: no such file or prefix")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"{url}: no .parquet files under it")
    return fs, files


def read_examples(url: str, columns: Columns = Columns(), limit: int | None = None) -> list[Example]:
    """Every (image, caption) row of the Parquet input at ``url``; ground truth when present."""
    fs, files = parquet_files(url)
    out: list[Example] = []
    for f in files:
        with fs.open_input_file(f) as fh:
            table = pq.read_table(fh)
        _require(table.schema, f, [columns.caption, columns.image])
        caps = table[columns.caption].to_pylist()
        imgs = table[columns.image].to_pylist()
        keys = table[columns.key].to_pylist() if columns.key in table.column_names else [f"{f}:{i}" for i in range(len(caps))]
        gtc = table["gt_caption"].to_pylist() if "gt_caption" in table.column_names else [None] * len(caps)
        gtm = table["gt_match"].to_pylist() if "gt_match" in table.column_names else [None] * len(caps)
        noise = table["noise"].to_pylist() if "noise" in table.column_names else [None] * len(caps)
        for k, c, im, g, m, n in zip(keys, caps, imgs, gtc, gtm, noise):
            if im is None:
                continue
            out.append(Example(image=im, text=c or "", key=k, gt_caption=g, gt_match=m, noise=n))
            if limit is not None and len(out) >= limit:
                return out
    return out


def _require(schema: pa.Schema, file: str, names: list[str]) -> None:
    for n in names:
        if n not in schema.names:
            raise ValueError(f"{file}: column '{n}' is missing (columns present: {', '.join(schema.names)})")


def read_round_cleaned(round_url: str, image_column: str = "jpg") -> list[Example]:
    """The kept (image, text) pairs of a finished round, following ``_manifest.json`` and the
    commit records; images come from the source files the cleaned rows reference."""
    fs, root = _fs(round_url.rstrip("/"))
    with fs.open_input_stream(f"{root}/_manifest.json") as fh:
        manifest = json.loads(fh.read())
    by_source: dict[str, list[tuple[int, str, str]]] = {}
    for shard in manifest.get("shards", []):
        if shard.get("state") != "committed":
            continue
        commit_path = shard.get("commit") or f"_commits/{shard['shard']['shard_id']}.json"
        with fs.open_input_stream(f"{root}/{commit_path}") as fh:
            commit = json.loads(fh.read())
        with fs.open_input_file(f"{root}/{commit['files']['cleaned']['path']}") as fh:
            cleaned = pq.read_table(fh, columns=["key", "source_file", "source_row", "text"])
        for key, src, row, text in zip(*(cleaned[c].to_pylist() for c in ["key", "source_file", "source_row", "text"])):
            by_source.setdefault(src, []).append((row, text, key))
    out: list[Example] = []
    for src in sorted(by_source):
        sfs, spath = _fs(src)
        with sfs.open_input_file(spath) as fh:
            images = pq.read_table(fh, columns=[image_column])[image_column]
        for row, text, key in sorted(by_source[src]):
            out.append(Example(image=images[row].as_py(), text=text, key=key))
    return out


def decode_rgb(data: bytes) -> Image.Image:
    """PIL decode, first frame, then RGB as HF's BlipImageProcessor makes it (transformers'
    ``convert_to_rgb``: an image with alpha is composited onto white); the Rust preprocessing
    matches this."""
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        if "A" in im.getbands() or im.info.get("transparency") is not None:
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
