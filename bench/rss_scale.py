"""Peak RSS of `glmv extract` over 50 vs 1,000 small pages (cache off): memory should stay flat."""

from __future__ import annotations

from bench.common import GLMV, TINY, WORK, cli_env, emit, noise_images, run_measured

SIZES = (50, 1000)
SCHEMA = "vendor, total float"
MAX_TOKENS = 32


def main() -> None:
    result: dict = {"name": "rss_scale", "image_px": [300, 200], "max_tokens": MAX_TOKENS}
    folders = {count: WORK / f"rss-{count}" for count in SIZES}
    for count, folder in folders.items():
        noise_images(folder, count, (300, 200), seed=10 + count)

    def command(target: str) -> list[str]:
        return [GLMV, "extract", target, "--schema", SCHEMA, "--max-tokens", str(MAX_TOKENS), "--no-cache", "-q"]

    # Untimed: the first run writes the bytecode cache, which would otherwise land in the 50-page figure.
    run_measured(command(str(next(folders[SIZES[0]].glob("*.png")))), env=cli_env(GLMV_MODEL=str(TINY)))
    for count, folder in folders.items():
        run = run_measured(command(str(folder)), env=cli_env(GLMV_MODEL=str(TINY)), timeout=480)
        records = run.stdout.count("\n")
        result[f"rss_{count}_mb"] = round(run.peak_rss_mb, 1)
        result[f"wall_{count}_s"] = round(run.wall_s, 1)
        result[f"records_{count}"] = records
        if run.rc not in (0, 3):  # 3: some documents failed; the run itself completed
            result["error"] = f"{count} pages: exit {run.rc}: {run.stderr.strip()[-200:]}"
    result["ratio"] = round(result["rss_1000_mb"] / result["rss_50_mb"], 3)
    emit(result)


if __name__ == "__main__":
    main()
