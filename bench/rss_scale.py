"""Peak RSS of `glmv extract` over 50 vs 1,000 real-size pages (cache off): memory is bounded by bytes, not pages.

The pages are the shared corpus's own: PDF pages (invoices and documents, rendered by glmv at
150 dpi) and photos and screenshots at their own size, read through the tiny checkpoint's
real-image-limits variant (the stock processor's cap: about 2,800 visual tokens for an A4 page).
Documents hold 1 to 8 pages, cycling, so the 50-page set is the 1,000-page set's beginning and
already holds the largest kind of document; only the count grows.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

from bench.common import GLMV, ROOT, TINY_REAL, WORK, cli_env, emit, run_measured, tiny_real

CORPUS = ROOT.parent / "shared" / "corpus"
SIZES = (50, 1000)
PAGES_PER_DOC = range(1, 9)
DPI = 150
SCHEMA = "vendor, total float"
MAX_TOKENS = 16  # the pages' memory is the question, not decoding


def corpus_sources() -> tuple[list[tuple[Path, int]], list[Path]]:
    """Every PDF page of the corpus (invoices and documents) and every photo or screenshot."""
    import pypdfium2 as pdfium

    pages: list[tuple[Path, int]] = []
    for pdf_path in sorted([*CORPUS.glob("invoices/*.pdf"), *CORPUS.glob("pdfs/*.pdf")]):
        pdf = pdfium.PdfDocument(pdf_path)
        pages += [(pdf_path, i) for i in range(len(pdf))]
        pdf.close()
    images = sorted(p for kind in ("receipts", "screenshots", "invoices") for p in (CORPUS / kind).glob("*.[jp][pn]g"))
    return pages, images


def build_folder(folder: Path, total_pages: int) -> list[int]:
    """Documents of 1, 2, ..., 8, 1, ... pages up to `total_pages`: a one-page document is a photo or
    screenshot every other time, the rest are PDFs made of corpus pages. The page counts, in order."""
    import pypdfium2 as pdfium

    marker = folder / ".complete"
    if marker.exists():
        return json.loads(marker.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pages, images = corpus_sources()
    page_source, image_source = itertools.cycle(pages), itertools.cycle(images)
    counts: list[int] = []
    for index, size in enumerate(itertools.cycle(PAGES_PER_DOC)):
        left = total_pages - sum(counts)
        if left <= 0:
            break
        size = min(size, left)
        if size == 1 and index % 16 == 0:
            image = next(image_source)
            shutil.copy(image, folder / f"doc{index:04d}{image.suffix}")
        else:
            out = pdfium.PdfDocument.new()
            for source_path, page_index in itertools.islice(page_source, size):
                source = pdfium.PdfDocument(source_path)
                out.import_pages(source, [page_index])
                source.close()
            out.save(str(folder / f"doc{index:04d}.pdf"))
            out.close()
        counts.append(size)
    marker.write_text(json.dumps(counts))
    return counts


def main() -> None:
    tiny_real()
    result: dict = {
        "name": "rss_scale",
        "checkpoint": str(TINY_REAL.relative_to(ROOT)),
        "dpi": DPI,
        "pages_per_doc": [PAGES_PER_DOC.start, PAGES_PER_DOC.stop - 1],
        "max_tokens": MAX_TOKENS,
    }
    folders = {count: WORK / f"rss-real-{count}" for count in SIZES}
    counts = {count: build_folder(folder, count) for count, folder in folders.items()}
    env = cli_env(GLMV_MODEL=str(TINY_REAL))

    def command(target: Path) -> list[str]:
        return [GLMV, "extract", str(target), "--schema", SCHEMA, "--max-tokens", str(MAX_TOKENS)] + [
            *("--dpi", str(DPI), "--max-pages", str(PAGES_PER_DOC.stop - 1), "--no-cache", "-q")
        ]

    # Untimed: the first run writes the bytecode cache, which would otherwise land in the 50-page figure.
    run_measured(command(next(folders[SIZES[0]].glob("*.pdf"))), env=env)
    for count, folder in folders.items():
        run = run_measured(command(folder), env=env, timeout=1800)
        records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        prompt_tokens = [
            r["timings"]["prompt_tokens"] for r in records if (r.get("timings") or {}).get("prompt_tokens")
        ]
        result[f"rss_{count}_mb"] = round(run.peak_rss_mb, 1)
        result[f"wall_{count}_s"] = round(run.wall_s, 1)
        result[f"docs_{count}"] = len(counts[count])
        result[f"pages_{count}"] = sum(r.get("page_count") or 0 for r in records)
        result[f"records_{count}"] = len(records)
        result[f"failed_{count}"] = sum(r["status"] == "failed" for r in records)
        result[f"prompt_tokens_{count}_max"] = max(prompt_tokens, default=None)
        result[f"prompt_tokens_{count}_per_page"] = round(sum(prompt_tokens) / max(1, result[f"pages_{count}"]))
        if run.rc not in (0, 3):  # 3: some documents failed; the run itself completed
            result["error"] = f"{count} pages: exit {run.rc}: {run.stderr.strip()[-200:]}"
    result["ratio"] = round(result["rss_1000_mb"] / result["rss_50_mb"], 3)
    emit(result)


if __name__ == "__main__":
    main()
