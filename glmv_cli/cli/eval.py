"""`glmv eval`: score extraction records against ground truth."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from glmv_cli.cli.common import handle_errors


class EvalFormat(StrEnum):
    text = "text"
    json = "json"


@handle_errors
def eval_(
    predictions: Annotated[Path, typer.Argument(help="JSONL of records from `glmv extract`.")],
    truth: Annotated[
        Path | None,
        typer.Argument(help="Folder of <stem>.truth.json files, or a JSONL with a 'file' key (or --corrections)."),
    ] = None,
    map_: Annotated[
        str | None,
        typer.Option("--map", help="Truth key -> schema field map: a JSON file or a shipped name (sroie, ...)."),
    ] = None,
    format_: Annotated[EvalFormat, typer.Option("--format", help="text (a table) or json.")] = EvalFormat.text,
    corrections: Annotated[
        bool,
        typer.Option("--corrections", help="Truth is what people decided in `glmv review` (fully reviewed documents)."),
    ] = False,
) -> None:
    """Per-field precision, recall and F1 of extraction records against ground truth."""
    import json

    from glmv_cli.errors import UsageError
    from glmv_cli.evaluation import evaluate

    if (truth is None) == (not corrections):
        raise UsageError("give a truth folder or file, or --corrections (one of them)")
    if corrections:
        from glmv_cli.evaluation.sources import read_predictions
        from glmv_cli.review.store import CorrectionStore, reviewed_truth

        expected = reviewed_truth(list(read_predictions(predictions).values()), CorrectionStore())
        if not expected:
            raise UsageError("no fully reviewed document among these records", "decide every field in `glmv review`")
        report = evaluate(predictions, expected, map_)
    else:
        report = evaluate(predictions, truth, map_)
    if format_ is EvalFormat.json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(render_text(report))


def render_text(report) -> str:
    """The report as plain aligned tables (stdout is data; no colour)."""
    width = max([len(f.field) for f in report.fields] + [15])
    lines = [f"{'field':<{width}}  {'prec':>6}  {'recall':>6}  {'f1':>6}  {'tp':>4}  {'fp':>4}  {'fn':>4}"]
    for row in [*report.fields, report.overall]:
        name = "overall (micro)" if row.field == "*" else row.field
        scores = f"{row.precision:6.3f}  {row.recall:6.3f}  {row.f1:6.3f}"
        lines.append(f"{name:<{width}}  {scores}  {row.tp:4}  {row.fp:4}  {row.fn:4}")
    lines += [
        "",
        f"documents {report.documents}: exact {report.exact_documents} ({report.exact_rate:.1%}), "
        f"failed {report.failed}, missing {report.missing}, records without truth {report.unlabelled}",
    ]
    if report.worst:
        lines += ["", "worst documents (f1, status, file):"]
        lines += [f"  {d.f1:.3f}  {d.status:<7}  {d.file}" for d in report.worst]
    if report.confidence:
        lines += ["", "confidence   wrong below   right at/above"]
        for row in report.confidence:
            wrong = "-" if row.wrong_below is None else f"{row.wrong_below:.1%}"
            right = "-" if row.right_above is None else f"{row.right_above:.1%}"
            lines.append(f"  {row.threshold:.2f}     {wrong:>10}   {right:>14}")
        auc = "-" if report.confidence_auc is None else f"{report.confidence_auc:.3f}"
        lines.append(
            f"separation (ROC AUC, right vs wrong values): {auc} over {report.right_values} right "
            f"and {report.wrong_values} wrong values"
        )
    return "\n".join(lines)
