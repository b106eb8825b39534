"""The bad-input corpus: every kind of broken or odd input a new user's data has, each with the
outcome capfilt promises for it. `cli/tests/bad_input_corpus.rs` checks every one.

    .venv/bin/python testdata/bad-input/make_corpus.py

writes, next to this script:

- `rows.parquet`: one row per image or row kind, keyed by the kind's name (the duplicate-key
  kind is two rows). Expected: the row is scored, or rejected with a reason, and the rest of the
  file goes on.
- `files/*`: one input file per file kind. Expected: `capfilt infer` processes it, or stops with
  one error line and exit code 2.
- `configs/*.toml`: one config per config kind. Expected: `capfilt run` stops with one line, exit 2.
- `manifest.json`: every kind, its category and its expected outcome; bundle kinds are
  mutations of the seed captioner that the test applies to a copy.

Deterministic: the same script gives the same bytes.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
rng = random.Random(0)


def scene(size: tuple[int, int] = (96, 96), mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", size, (30, 110, 200))
    d = ImageDraw.Draw(img)
    w, h = size
    d.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(220, 40, 40))
    return img.convert(mode) if mode != "RGB" else img


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int, depth: int = 8, color: int = 2) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))


def bomb() -> bytes:
    # 10,000 x 10,000 1-bit grey: 100 Mpx (over the 89.5 Mpx limit) in a few kilobytes.
    w = h = 10_000
    row = b"\x00" + b"\x00" * (w // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return png_header(w, h, depth=1, color=0) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def bad_crc_png() -> bytes:
    good = bytearray(encode(scene(), "PNG"))
    idat = good.index(b"IDAT")
    good[idat + 8] ^= 0xFF  # a data byte: the chunk's CRC no longer matches
    return bytes(good)


def animated_gif() -> bytes:
    frames = [scene().convert("P"), scene((96, 96)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def images() -> list[tuple[str, bytes | None, str]]:
    jpeg = encode(scene(), "JPEG", quality=90)
    png = encode(scene(), "PNG")
    return [
        ("image_zero_bytes", b"", "reject:missing_image"),
        ("image_random_bytes", bytes(rng.randrange(256) for _ in range(2048)), "reject:decode_error"),
        ("image_jpeg_cut_in_header", jpeg[:120], "reject:decode_error"),
        ("image_jpeg_cut_in_scan", jpeg[: len(jpeg) // 2], "reject:decode_error"),
        ("image_jpeg_cut_before_end_marker", jpeg[:-2], "reject:decode_error"),
        ("image_png_cut_in_header", png[:20], "reject:decode_error"),
        ("image_png_cut_in_data", png[: len(png) // 2], "reject:decode_error"),
        ("image_png_bad_crc", bad_crc_png(), "reject:decode_error"),
        ("image_huge_declared_dimensions",
         png_header(100_000, 100_000) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""),
         "reject:too_large"),
        ("image_decompression_bomb", bomb(), "reject:too_large"),
        ("image_1x1", encode(scene((1, 1)), "JPEG"), "scored"),
        ("image_png_16_bit", encode(scene().convert("I;16"), "PNG"), "scored"),
        ("image_jpeg_cmyk", encode(scene(mode="CMYK"), "JPEG"), "scored"),
        ("image_jpeg_grayscale", encode(scene(mode="L"), "JPEG"), "scored"),
        ("image_jpeg_progressive", encode(scene(), "JPEG", progressive=True), "scored"),
        ("image_jpeg_trailing_bytes", jpeg + b"\x00" * 5000 + b"trailer", "scored"),
        ("image_png_palette", encode(scene().convert("P"), "PNG"), "scored"),
        ("image_png_alpha", encode(scene(mode="RGBA"), "PNG"), "scored"),
        ("image_png_grey_alpha", encode(scene(mode="LA"), "PNG"), "scored"),
        ("image_gif_animated", animated_gif(), "scored"),
        ("image_webp", encode(scene(), "WEBP", quality=80), "scored"),
        ("image_bmp", encode(scene(), "BMP"), "scored"),
        ("image_tiff", encode(scene(), "TIFF"), "reject:decode_error"),
        ("image_svg_bytes", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>', "reject:decode_error"),
        ("image_html_bytes", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "reject:decode_error"),
    ]


def rows_table() -> tuple[pa.Table, list[dict]]:
    good = encode(scene(), "JPEG", quality=90)
    kinds = []
    keys, captions, imgs = [], [], []

    def add(key, caption, image, kind, expect):
        if kind is not None:
            kinds.append({"kind": kind, "category": "row" if kind.startswith("row_") else "image", "key": key,
                          "row": len(keys), "expect": expect})
        keys.append(key)
        captions.append(caption)
        imgs.append(image)

    for kind, image, expect in images():
        add(kind, "a red circle on a blue background", image, kind, expect)
    add("row_null_image", "a red circle", None, "row_null_image", "reject:missing_image")
    add("row_null_caption", None, good, "row_null_caption", "scored:no_web_text")
    add("row_empty_caption", "", good, "row_empty_caption", "scored:no_web_text")
    add("row_caption_1mb", "red " * 262_144, good, "row_caption_1mb", "scored:caption_cut")
    add("row_caption_control_characters", "a red\x00circle\x07 on\tblue\r\n", good, "row_caption_control_characters",
        "scored")
    add("row_caption_mixed_scripts", "красный круг 赤い円 دائرة حمراء 🔴 on blue", good, "row_caption_mixed_scripts",
        "scored")
    add("row_duplicate_key", "a red circle", good, "row_duplicate_key", "scored:key_repeated")
    add("row_duplicate_key", "the same key again", good, None, None)
    add("", "a red circle", good, "row_empty_key", "scored:key_derived")
    add(None, "a red circle", good, "row_null_key", "scored:key_derived")
    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "url": pa.array([None] * len(keys), pa.string()),
        "caption": pa.array(captions, pa.string()),
        "jpg": pa.array(imgs, pa.binary()),
    })
    return table, kinds


def files() -> list[dict]:
    out = HERE / "files"
    out.mkdir(exist_ok=True)
    good = encode(scene(), "JPEG")
    schema = pa.schema([("key", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("jpg", pa.binary())])
    kinds = []

    def write(name: str, table: pa.Table, kind: str, expect: str) -> None:
        pq.write_table(table, out / name)
        kinds.append({"kind": kind, "category": "file", "path": f"files/{name}", "expect": expect})

    write("zero_rows.parquet", schema.empty_table(), "file_zero_rows", "ok:0")
    one = {"key": ["k"], "url": [None], "caption": ["c"], "jpg": [good]}
    write("missing_image_column.parquet", pa.table({k: v for k, v in one.items() if k != "jpg"},
                                                   schema=pa.schema([f for f in schema if f.name != "jpg"])),
          "file_missing_image_column", "error:jpg")
    write("mistyped_caption_column.parquet",
          pa.table({"key": ["k"], "url": pa.array([None], pa.string()), "caption": [7], "jpg": [good]}),
          "file_mistyped_caption_column", "error:caption")
    full = pa.table(one, schema=schema)
    buf = io.BytesIO()
    pq.write_table(full, buf)
    (out / "truncated.parquet").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    kinds.append({"kind": "file_truncated_parquet", "category": "file", "path": "files/truncated.parquet",
                  "expect": "error:truncated.parquet"})
    (out / "not_parquet.parquet").write_text("key,caption\nk,a red circle\n")
    kinds.append({"kind": "file_not_parquet", "category": "file", "path": "files/not_parquet.parquet",
                  "expect": "error:not_parquet.parquet"})
    (out / "empty_prefix").mkdir(exist_ok=True)
    (out / "empty_prefix" / ".keep").write_text("")
    kinds.append({"kind": "file_empty_prefix", "category": "prefix", "path": "files/empty_prefix",
                  "expect": "error:no .parquet files"})
    return kinds


def configs() -> list[dict]:
    out = HERE / "configs"
    out.mkdir(exist_ok=True)
    cases = [
        ("unknown_key", "[capfilt]\nthreshhold = 0.5\n", "threshhold"),
        ("malformed_toml", "[capfilt\nthreshold = 0.5\n", "line 1"),
        ("out_of_range_threshold", "[capfilt]\nthreshold = 1.5\n", "threshold"),
        ("wrong_type", "workers = \"two\"\n", "workers"),
        ("unknown_section", "[cordinator]\nlisten = \"0.0.0.0:1\"\n", "cordinator"),
        ("bad_store_option", "[store]\ncapfilt_fault_rate = \"lots\"\n", "capfilt_fault_rate"),
    ]
    kinds = []
    for name, text, needle in cases:
        (out / f"{name}.toml").write_text(text)
        kinds.append({"kind": f"config_{name}", "category": "config", "path": f"configs/{name}.toml",
                      "expect": f"error:{needle}"})
    return kinds


def bundles() -> list[dict]:
    return [
        {"kind": "bundle_missing_graph", "category": "bundle", "mutation": "delete:decoder.onnx",
         "expect": "error:decoder.onnx"},
        {"kind": "bundle_changed_byte", "category": "bundle", "mutation": "flip:vision.onnx",
         "expect": "error:vision.onnx"},
        {"kind": "bundle_bad_json", "category": "bundle", "mutation": "write:bundle.json:{not json",
         "expect": "error:bundle.json"},
        {"kind": "bundle_missing_folder", "category": "bundle", "mutation": "remove",
         "expect": "error:bundle"},
    ]


def main() -> None:
    table, row_kinds = rows_table()
    pq.write_table(table, HERE / "rows.parquet", row_group_size=8)
    kinds = row_kinds + files() + configs() + bundles()
    names = [k["kind"] for k in kinds]
    assert len(names) == len(set(names)), "kind names are unique"
    (HERE / "manifest.json").write_text(json.dumps({"kinds": kinds}, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(kinds)} kinds written to {HERE}")


if __name__ == "__main__":
    main()
