"""Fuzz the input layer: mutated corpus images and PDFs through load_document, one worker process per case slot.

Every case must end as a loaded document or a GlmvError. Anything else (another exception,
a malformed Document, a dead worker, a case past its timeout) is a finding: its bytes and
traceback are saved, the summary lists it, and the exit status is 1.

    .venv/bin/python tools/fuzz_inputs.py --cases 10000 --seed 0 --workers 2 --timeout 20
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import multiprocessing
import os
import random
import re
import resource
import struct
import sys
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
SEED_SUFFIXES = {".png", ".jpg", ".jpeg", ".pdf", ".tif", ".tiff", ".gif", ".bmp", ".webp"}
UNEXPECTED = ("unexpected_exception", "invalid_document", "crash", "hang")
SAMPLES_PER_SIGNATURE = 3  # one bug tends to fire thousands of times; keep a few repros of each
WORKER_MEMORY = 3 << 30  # address-space cap, so a runaway allocation is a MemoryError, not the OOM killer

PNG_SIG = b"\x89PNG\r\n\x1a\n"
MAGIC = {
    "png": PNG_SIG,
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "gif": b"GIF89a",
    "tiff": b"II*\x00\x08\x00\x00\x00",
    "bmp": b"BM" + bytes(12) + struct.pack("<I", 40),
    "webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "pdf": b"%PDF-1.7\n",
}


@dataclass
class Case:
    """One mutated document: which seed, which mutation, the bytes."""

    index: int
    seed_name: str
    mutator: str
    data: bytes


# --- seeds ------------------------------------------------------------------------------


def load_seeds() -> list[tuple[str, bytes]]:
    """Corpus and sample documents, plus re-encodings in formats the corpus lacks (BMP, GIF, WebP, ...)."""
    paths = sorted(p for p in CORPUS.rglob("*") if p.is_file()) if CORPUS.is_dir() else []
    paths += sorted((ROOT / "samples").glob("*"))
    seeds = [
        (str(p.relative_to(ROOT.parent)), p.read_bytes())
        for p in paths
        if p.suffix.lower() in SEED_SUFFIXES and p.stat().st_size > 0
    ]
    return seeds + _derived_seeds()


def _derived_seeds() -> list[tuple[str, bytes]]:
    from PIL import Image

    base = Image.open(ROOT / "samples" / "screenshot-login.png").convert("RGB")
    base.thumbnail((320, 320))  # small: the dims mutators, not decode time, are the point
    out = []
    for name, fmt, kwargs in [
        ("derived.bmp", "BMP", {}),
        ("derived.gif", "GIF", {}),
        ("derived.webp", "WEBP", {"quality": 60}),
        ("derived-progressive.jpg", "JPEG", {"progressive": True}),  # SOF2
        ("derived-2frames.tiff", "TIFF", {"save_all": True, "append_images": [base.rotate(90)]}),
    ]:
        buf = io.BytesIO()
        base.save(buf, fmt, **kwargs)
        out.append((name, buf.getvalue()))
    return out


def kind_of(data: bytes) -> str | None:
    """The format a seed's magic bytes claim (for picking mutators that know its layout)."""
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data.startswith(PNG_SIG):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"GIF8":
        return "gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


# --- mutators: each takes the seed bytes and a seeded RNG ---------------------------------


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    """Flip 1-50 random bits, half of them in the first 4 KiB where the headers are."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 50)):
        limit = min(len(buf), 4096) if rng.random() < 0.5 else len(buf)
        buf[rng.randrange(limit)] ^= 1 << rng.randrange(8)
    return bytes(buf)


def truncation(data: bytes, rng: random.Random) -> bytes:
    """Cut the file anywhere, near its start (inside headers) or near its end (trailer, last chunk)."""
    where = rng.random()
    if where < 0.3:
        cut = rng.randrange(1, min(len(data), 256))
    elif where < 0.6:
        cut = len(data) - rng.randrange(1, min(len(data), 2048))
    else:
        cut = rng.randrange(1, len(data))
    return data[: max(cut, 1)]


def header_swap(data: bytes, rng: random.Random) -> bytes:
    """Another format's magic over this file's header, or in front of it."""
    own = kind_of(data)
    magic = MAGIC[rng.choice([k for k in MAGIC if k != own])]
    if rng.random() < 0.5:
        return magic + data[len(magic) :]
    return magic + data


def edited_dimensions(data: bytes, rng: random.Random) -> bytes:
    """Rewrite the width/height a header declares (PNG, JPEG, GIF, BMP, TIFF)."""
    edit = _DIMENSION_EDITORS[kind_of(data)]
    out = edit(bytearray(data), rng)
    return bytes(out) if out is not None else bit_flips(data, rng)


def _dimension(rng: random.Random, bits: int, signed: bool = False) -> int:
    top = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    pool = [0, 1, 2, top, top - 1, rng.randrange(top), 1 << (bits // 2), 65535 & top]
    if signed:
        pool += [-1, -top - 1, -rng.randrange(top)]
    return rng.choice(pool)


def _png_dims(buf: bytearray, rng: random.Random) -> bytearray | None:
    if buf[12:16] != b"IHDR" or len(buf) < 33:
        return None
    for offset in rng.choice([(16,), (20,), (16, 20)]):  # width, height or both
        buf[offset : offset + 4] = struct.pack(">I", _dimension(rng, 32))
    if rng.random() < 0.5:  # a fixed CRC gets past the chunk check to the size checks
        buf[29:33] = struct.pack(">I", zlib.crc32(bytes(buf[12:29])))
    return buf


def _jpeg_dims(buf: bytearray, rng: random.Random) -> bytearray | None:
    i = 2
    while i + 9 < len(buf) and buf[i] == 0xFF:
        marker, length = buf[i + 1], struct.unpack(">H", buf[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB):  # SOFn: precision, height, width
            offset = i + 5 + 2 * rng.randrange(2)
            buf[offset : offset + 2] = struct.pack(">H", _dimension(rng, 16))
            return buf
        i += 2 + length
    return None


def _gif_dims(buf: bytearray, rng: random.Random) -> bytearray | None:
    if len(buf) < 13:
        return None
    offsets = [6, 8]  # logical screen width, height
    i = 13 + (3 << ((buf[10] & 7) + 1) if buf[10] & 0x80 else 0)
    while i + 10 < len(buf):  # find the first image descriptor, skipping extensions
        if buf[i] == 0x2C:
            offsets += [i + 5, i + 7]
            break
        if buf[i] != 0x21:
            break
        i += 2
        while i < len(buf) and buf[i]:
            i += buf[i] + 1
        i += 1
    offset = rng.choice(offsets)
    buf[offset : offset + 2] = struct.pack("<H", _dimension(rng, 16))
    return buf


def _bmp_dims(buf: bytearray, rng: random.Random) -> bytearray | None:
    if len(buf) < 26:
        return None
    offset = rng.choice([18, 22])  # signed: a negative height means top-down rows
    buf[offset : offset + 4] = struct.pack("<i", _dimension(rng, 32, signed=True))
    return buf


def _tiff_dims(buf: bytearray, rng: random.Random) -> bytearray | None:
    order = "<" if buf[:2] == b"II" else ">"
    ifd, entries = struct.unpack(order + "I", buf[4:8])[0], []
    for _ in range(8):  # walk a few IFDs: later pages have their own sizes
        if not 8 <= ifd < len(buf) - 2:
            break
        count = struct.unpack(order + "H", buf[ifd : ifd + 2])[0]
        for n in range(count):
            entry = ifd + 2 + 12 * n
            if entry + 12 > len(buf):
                break
            tag, kind = struct.unpack(order + "HH", buf[entry : entry + 4])
            if tag in (256, 257):  # ImageWidth, ImageLength
                entries.append((entry, kind))
        end = ifd + 2 + 12 * count
        ifd = struct.unpack(order + "I", buf[end : end + 4])[0] if end + 4 <= len(buf) else 0
    if not entries:
        return None
    entry, kind = rng.choice(entries)
    if kind == 3:  # SHORT
        buf[entry + 8 : entry + 10] = struct.pack(order + "H", _dimension(rng, 16))
    else:
        buf[entry + 8 : entry + 12] = struct.pack(order + "I", _dimension(rng, 32))
    return buf


_DIMENSION_EDITORS: dict[str | None, Callable[[bytearray, random.Random], bytearray | None]] = {
    "png": _png_dims,
    "jpeg": _jpeg_dims,
    "gif": _gif_dims,
    "bmp": _bmp_dims,
    "tiff": _tiff_dims,
}

_BOX = re.compile(rb"/(MediaBox|CropBox|TrimBox|ArtBox|BleedBox)\s*\[[^\]]*\]")
_BOX_VALUES = [
    b"[0 0 0.2 842]",
    b"[0 0 -612 -792]",
    b"[0 0 1e9 1e9]",
    b"[0 0 1000000000 1000000000]",
    b"[-1000000000 -1000000000 1000000000 1000000000]",
    b"[0 0 0 0]",
    b"[0 0 612 nan]",
    b"[0 0 inf -inf]",
    b"[612 792 0 0]",
    b"[0 0 612]",
    b"[]",
    b"[0 0 99999999999999999999999999 1]",
    b"[0 0 0.00001 0.00001]",
    b"[/a (b) <63> 1]",
]
_PAGE_ATTRIBUTES = [b"/Rotate 45", b"/Rotate -90", b"/Rotate 2147483647", b"/UserUnit 75000", b"/UserUnit 0"]


def page_boxes(data: bytes, rng: random.Random) -> bytes:
    """Rewrite a page box (MediaBox, CropBox, ...) or add an odd /Rotate or /UserUnit after it."""
    boxes = list(_BOX.finditer(data))
    if not boxes:  # boxes inside compressed object streams: nothing to edit in place
        return bit_flips(data, rng)
    box = rng.choice(boxes)
    if rng.random() < 0.8:
        new = b"/" + box.group(1) + b" " + rng.choice(_BOX_VALUES)
        # Padding to the old length keeps the xref offsets right, so pdfium reads the edit
        # rather than rebuilding the file; a longer value is left to the repair path.
        new = new.ljust(len(box.group(0)))
    else:
        new = box.group(0) + b" " + rng.choice(_PAGE_ATTRIBUTES)
    return data[: box.start()] + new + data[box.end() :]


def chunk_edits(data: bytes, rng: random.Random) -> bytes:
    """Duplicate, zero or drop a span; for PNG, a whole chunk (a second IHDR, no IEND, ...)."""
    if kind_of(data) == "png" and rng.random() < 0.5:
        chunks, i = [], 8
        while i + 12 <= len(data):
            length = struct.unpack(">I", data[i : i + 4])[0]
            chunks.append((i, min(i + 12 + length, len(data))))
            i += 12 + length
        if chunks:
            start, end = rng.choice(chunks)
            if rng.random() < 0.5:
                return data[:end] + data[start:end] + data[end:]
            return data[:start] + data[end:]
    size = rng.randint(1, min(4096, len(data)))
    start = rng.randrange(len(data) - size + 1)
    span = data[start : start + size]
    action = rng.randrange(3)
    if action == 0:
        at = rng.randrange(len(data) + 1)
        return data[:at] + span + data[at:]
    if action == 1:
        return data[:start] + bytes(size) + data[start + size :]
    return data[:start] + data[start + size :]


MUTATORS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bit_flips": bit_flips,
    "truncation": truncation,
    "header_swap": header_swap,
    "dimensions": edited_dimensions,
    "page_boxes": page_boxes,
    "chunks": chunk_edits,
}


def _applicable(kind: str | None) -> list[str]:
    """Mutators that make sense for a seed: header-aware ones only for the formats they know."""
    skip = set()
    if kind not in _DIMENSION_EDITORS:
        skip.add("dimensions")
    if kind != "pdf":
        skip.add("page_boxes")
    return [name for name in MUTATORS if name not in skip]


def make_case(seeds: list[tuple[str, bytes]], seed: int, index: int) -> Case:
    """Case `index` of run `seed`: the same bytes every time, in any process."""
    rng = random.Random(f"{seed}:{index}")
    name, data = rng.choice(seeds)
    mutator = rng.choice(_applicable(kind_of(data)))
    return Case(index, name, mutator, MUTATORS[mutator](data, rng))


# --- worker side --------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What every case passes to load_document, and where workers write their noise."""

    seed: int
    dpi: int
    max_pages: int
    max_pixels: int
    log: str


def classify(data: bytes, opts: Options) -> tuple:
    """Load one document; the outcome as a small picklable tuple."""
    from glmv_cli.errors import GlmvError
    from glmv_cli.inputs import load_document

    try:
        doc = load_document(
            data, name="fuzz", dpi=opts.dpi, max_pages=opts.max_pages, max_pixels=opts.max_pixels, **_in_process()
        )
    except GlmvError as exc:
        return ("glmv_error", exc.code, type(exc).__name__, exc.message[:200])
    except Exception as exc:  # the point of the exercise: anything but a GlmvError is a bug
        return ("unexpected_exception", type(exc).__qualname__, str(exc)[:300], traceback.format_exc())
    problem = _document_problem(doc, opts)
    if problem:
        return ("invalid_document", problem, "", "")
    return ("loaded", doc.kind, len(doc.pages))


def _in_process() -> dict:
    """Keywords that make load_document render PDFs in this process: the fuzz worker is the isolation."""
    from glmv_cli.inputs import load_document, pdf

    render = getattr(pdf, "render_in_process", None)  # absent before PDF rendering moved to workers
    return {"render_pdf": render} if render and "render_pdf" in inspect.signature(load_document).parameters else {}


def _document_problem(doc, opts: Options) -> str | None:
    """Why a loaded Document breaks what the rest of glmv assumes of one, if it does."""
    if not 1 <= len(doc.pages) <= opts.max_pages:
        return f"{len(doc.pages)} pages loaded (max_pages={opts.max_pages})"
    for page in doc.pages:
        image = page.image
        if image.mode != "RGB" or image.width < 1 or image.height < 1:
            return f"page {page.number}: {image.mode} {image.width}x{image.height}"
        if image.width * image.height > opts.max_pixels:
            return f"page {page.number}: {image.width}x{image.height} over max_pixels={opts.max_pixels}"
    return None


def _worker_main(conn: Connection, seeds: list[tuple[str, bytes]], opts: Options) -> None:
    # pdfium and libjpeg write warnings to the C-level stderr: keep them out of the summary.
    log = os.open(opts.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    warnings.simplefilter("ignore")
    while True:
        index = conn.recv()
        if index is None:
            return
        case = make_case(seeds, opts.seed, index)
        conn.send(classify(case.data, opts))


# --- parent side --------------------------------------------------------------------------


class Worker:
    """One forked worker process with a pipe; replaced whole when it dies or hangs."""

    def __init__(self, ctx, seeds: list[tuple[str, bytes]], opts: Options):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, seeds, opts), daemon=True)
        self.proc.start()
        child.close()
        self.index: int | None = None
        self.deadline = 0.0

    def start(self, index: int, timeout: float) -> None:
        self.index, self.deadline = index, time.monotonic() + timeout
        self.conn.send(index)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


def run_cases(seeds: list[tuple[str, bytes]], opts: Options, cases: int, workers: int, timeout: float, on_result):
    """Run cases 0..cases-1 over `workers` processes; on_result(index, outcome) for each."""
    ctx = multiprocessing.get_context("fork")  # children inherit the seeds instead of unpickling them
    pool = [Worker(ctx, seeds, opts) for _ in range(workers)]
    todo = iter(range(cases))
    for worker in pool:
        index = next(todo, None)
        if index is not None:
            worker.start(index, timeout)
    while any(w.index is not None for w in pool):
        busy = [w for w in pool if w.index is not None]
        wait_for = max(0.0, min(w.deadline for w in busy) - time.monotonic())
        wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait_for)
        for slot, worker in enumerate(pool):
            if worker.index is None:
                continue
            outcome = _poll(worker)
            if outcome is None:
                continue
            on_result(worker.index, outcome)
            worker.index = None
            if outcome[0] in ("crash", "hang"):
                worker.kill()
                pool[slot] = worker = Worker(ctx, seeds, opts)
            index = next(todo, None)
            if index is not None:
                worker.start(index, timeout)
    for worker in pool:
        worker.conn.send(None)
        worker.proc.join(timeout=5)
        if worker.proc.is_alive():
            worker.kill()


def _poll(worker: Worker) -> tuple | None:
    """The finished case's outcome, ("crash", ...) if the worker died, ("hang", ...) past its deadline."""
    if worker.conn.poll():
        try:
            return worker.conn.recv()
        except (EOFError, OSError):
            pass  # the pipe closed: the worker died mid-case
    elif worker.proc.is_alive():
        if time.monotonic() < worker.deadline:
            return None
        return ("hang", "timeout", "", "")
    worker.proc.join()
    code = worker.proc.exitcode
    how = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
    return ("crash", how, "", "")


class Tally:
    """Counts per outcome, mutator, seed kind and error code; saves repros of the unexpected."""

    def __init__(self, seeds: list[tuple[str, bytes]], seed: int, findings: Path):
        self.seeds, self.seed, self.findings = seeds, seed, findings
        self.outcomes: Counter[str] = Counter()
        self.by_mutator: dict[str, Counter[str]] = {}
        self.codes: Counter[str] = Counter()
        self.signatures: Counter[str] = Counter()
        self.unexpected: list[dict] = []
        self.done = 0

    def add(self, index: int, outcome: tuple) -> None:
        case = make_case(self.seeds, self.seed, index)  # cheap to rebuild, deterministic
        kind = outcome[0]
        self.done += 1
        self.outcomes[kind] += 1
        self.by_mutator.setdefault(case.mutator, Counter())[kind] += 1
        if kind == "glmv_error":
            self.codes[f"{outcome[1]} ({outcome[2]})"] += 1
        if kind in UNEXPECTED:
            self._record(case, outcome)

    def _record(self, case: Case, outcome: tuple) -> None:
        kind, what, message, trace = outcome
        signature = f"{kind}: {what}: {_last_frame(trace)}"
        self.signatures[signature] += 1
        entry = {"case": case.index, "seed": case.seed_name, "mutator": case.mutator, "outcome": kind}
        entry |= {"what": what, "message": message, "signature": signature}
        if self.signatures[signature] <= SAMPLES_PER_SIGNATURE:
            self.findings.mkdir(parents=True, exist_ok=True)
            stem = f"{kind}-{case.index:05d}-{case.mutator}-{Path(case.seed_name).name}"
            path = self.findings / f"{stem}.bin"
            path.write_bytes(case.data)
            (self.findings / f"{stem}.txt").write_text(
                f"seed {case.seed_name}\nmutator {case.mutator}\nrun seed {self.seed}, case {case.index}\n"
                f"{kind}: {what}: {message}\n\n{trace}"
            )
            entry["repro"] = str(path)
        self.unexpected.append(entry)


def _last_frame(trace: str) -> str:
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    return f"{Path(frames[-1][0]).name}:{frames[-1][1]}" if frames else ""


def summary(tally: Tally, seconds: float) -> str:
    """The human-readable table for stdout."""
    lines = [f"{tally.done} cases in {seconds:.0f} s ({tally.done / max(seconds, 1e-9):.1f} cases/s)", ""]
    lines.append("outcome                 count")
    for kind in ("loaded", "glmv_error", *UNEXPECTED):
        lines.append(f"  {kind:<22}{tally.outcomes[kind]:>7}")
    kinds = ["loaded", "glmv_error", "unexpected"]
    lines += ["", f"{'mutator':<16}" + "".join(f"{k:>12}" for k in kinds)]
    for mutator, counts in sorted(tally.by_mutator.items()):
        row = [counts["loaded"], counts["glmv_error"], sum(counts[k] for k in UNEXPECTED)]
        lines.append(f"  {mutator:<14}" + "".join(f"{n:>12}" for n in row))
    lines += ["", "glmv error code (class)          count"]
    lines += [f"  {code:<32}{n:>7}" for code, n in tally.codes.most_common()]
    if tally.signatures:
        lines += ["", "UNEXPECTED (signature: count)"]
        lines += [f"  {sig}: {n}" for sig, n in tally.signatures.most_common()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the cases, print the table, write the JSON report; 1 if anything unexpected."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="run seed: the same seed makes the same cases")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--dpi", type=int, default=72)
    parser.add_argument("--max-pixels", type=int, default=16_000_000)
    parser.add_argument("--findings", type=Path, default=Path("/tmp/fuzz-findings"))
    parser.add_argument("--report", type=Path, default=ROOT / "build" / "fuzz-report.json")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    import glmv_cli.inputs  # noqa: F401  imported before forking, so workers start warm

    seeds = load_seeds()
    args.report.parent.mkdir(parents=True, exist_ok=True)
    opts = Options(args.seed, args.dpi, 2, args.max_pixels, str(args.report.with_suffix(".worker.log")))
    tally = Tally(seeds, args.seed, args.findings)
    print(f"{len(seeds)} seeds, {args.cases} cases, {args.workers} workers, seed {args.seed}", file=sys.stderr)
    started = time.monotonic()

    def on_result(index: int, outcome: tuple) -> None:
        tally.add(index, outcome)
        if tally.done % 500 == 0:
            rate = tally.done / (time.monotonic() - started)
            print(f"  {tally.done}/{args.cases} ({rate:.1f}/s) {dict(tally.outcomes)}", file=sys.stderr)

    run_cases(seeds, opts, args.cases, args.workers, args.timeout, on_result)
    seconds = time.monotonic() - started
    print(summary(tally, seconds))
    report = {
        "cases": tally.done,
        "seconds": round(seconds, 1),
        "settings": vars(args) | {"findings": str(args.findings), "report": str(args.report)},
        "seeds": len(seeds),
        "outcomes": dict(tally.outcomes),
        "by_mutator": {m: dict(c) for m, c in sorted(tally.by_mutator.items())},
        "error_codes": dict(tally.codes),
        "unexpected_signatures": dict(tally.signatures),
        "unexpected": tally.unexpected,
    }
    args.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"report: {args.report}", file=sys.stderr)
    return 1 if any(tally.outcomes[k] for k in UNEXPECTED) else 0


if __name__ == "__main__":
    sys.exit(main())
