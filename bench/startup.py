"""`glmv --help` start-up time: median of 5 fresh subprocesses.

Timed with bytecode cached (one untimed warm-up run writes it), as an installed glmv runs; the
median without glmv's bytecode (this sandbox's PYTHONDONTWRITEBYTECODE=1, editable install) is
reported beside it.
"""

from __future__ import annotations

import statistics

from bench.common import GLMV, cli_env, emit, run_measured

RUNS = 5


def main() -> None:
    warm = run_measured([GLMV, "--help"], env=cli_env())  # writes the bytecode cache
    runs = [run_measured([GLMV, "--help"], env=cli_env()) for _ in range(RUNS)]
    as_is = [run_measured([GLMV, "--help"]) for _ in range(RUNS)]
    failed = [r for r in [warm, *runs, *as_is] if r.rc != 0]
    walls = [r.wall_s for r in runs]
    emit(
        {
            "name": "startup",
            "help_median_s": round(statistics.median(walls), 4),
            "help_runs_s": [round(w, 4) for w in walls],
            "help_first_run_s": round(warm.wall_s, 3),
            "help_no_bytecode_median_s": round(statistics.median(r.wall_s for r in as_is), 4),
            "help_peak_rss_mb": round(max(r.peak_rss_mb for r in runs), 1),
            "error": f"glmv --help exited {failed[0].rc}: {failed[0].stderr[-200:]}" if failed else None,
        }
    )


if __name__ == "__main__":
    main()
