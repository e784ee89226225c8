"""`glmv --help` start-up time: median of 5 fresh subprocesses."""

from __future__ import annotations

import statistics

from bench.common import GLMV, emit, run_measured

RUNS = 5


def main() -> None:
    runs = [run_measured([GLMV, "--help"]) for _ in range(RUNS)]
    failed = [r for r in runs if r.rc != 0]
    walls = [r.wall_s for r in runs]
    emit(
        {
            "name": "startup",
            "help_median_s": round(statistics.median(walls), 4),
            "help_runs_s": [round(w, 4) for w in walls],
            "help_peak_rss_mb": round(max(r.peak_rss_mb for r in runs), 1),
            "error": f"glmv --help exited {failed[0].rc}: {failed[0].stderr[-200:]}" if failed else None,
        }
    )


if __name__ == "__main__":
    main()
