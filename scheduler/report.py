"""`af2cpu report DIR`: where a batch stands — per target done, failed or pending, stage times, best model.

Works from the output folder alone (no FASTA needed), so it can run while array tasks are still
writing into it, or long after: targets are the folders with a ``target.json`` plus the targets of
``summary.json`` (a target refused before its folder was made, e.g. too long for the memory, is only
there). A target is *done* when its final outputs exist (``ranking_debug.json``, ``ranked_0.pdb``,
``timings.json``), *failed* when the batch summary says so and they do not, and *pending* otherwise.
Stage times come from the stage records (``<target>/<stage>.stage.json``), completed by
``timings.json`` for the stages that keep no record (ranking, final files). Writes ``DIR/report.csv``
and ``DIR/report.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
from pathlib import Path

from af2cpu.errors import InputError

FINAL_OUTPUTS = ("ranking_debug.json", "ranked_0.pdb", "timings.json")
STAGE_RECORD_SUFFIX = ".stage.json"


@dataclasses.dataclass
class TargetReport:
    """One target's line of the report."""

    target_id: str
    status: str  # done | failed | pending
    length: int | None = None
    best_model: str | None = None
    mean_plddt: float | None = None
    ptm: float | None = None
    failure_reason: str | None = None
    stage_seconds: dict = dataclasses.field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return round(sum(self.stage_seconds.values()), 3)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def stage_seconds(target_dir: Path) -> dict[str, float]:
    """{stage: seconds} from the stage records, plus the stages only ``timings.json`` knows."""
    seconds = {}
    for path in sorted(target_dir.glob("*" + STAGE_RECORD_SUFFIX)):
        record = _read_json(path)
        if record and "started" in record and "finished" in record:
            seconds[record.get("stage", path.name[: -len(STAGE_RECORD_SUFFIX)])] = round(
                float(record["finished"]) - float(record["started"]), 3)
    for name, entry in (_read_json(target_dir / "timings.json") or {}).items():
        if name not in seconds and isinstance(entry, dict) and "duration" in entry:
            seconds[name] = round(float(entry["duration"]), 3)
    return seconds


def _batch_summary(out_dir: Path) -> dict[str, dict]:
    payload = _read_json(out_dir / "summary.json") or {}
    return {entry["target_id"]: entry for entry in payload.get("targets", []) if "target_id" in entry}


def target_report(target_dir: Path, target_id: str, summary: dict | None) -> TargetReport:
    """The report of one target from its folder (which may not exist) and its batch-summary entry."""
    summary = summary or {}
    info = _read_json(target_dir / "target.json") or {}
    length = len(info["sequence"]) if "sequence" in info else summary.get("length")
    report = TargetReport(target_id, "pending", length=length, stage_seconds=stage_seconds(target_dir))
    if all((target_dir / name).is_file() for name in FINAL_OUTPUTS):
        report.status = "done"
        ranking = _read_json(target_dir / "ranking_debug.json") or {}
        order = ranking.get("order") or []
        report.best_model = order[0] if order else summary.get("best_model")
        if report.best_model == summary.get("best_model") and summary.get("mean_plddt") is not None:
            report.mean_plddt, report.ptm = summary["mean_plddt"], summary.get("ptm")
        elif report.best_model:
            # Monomers rank by mean pLDDT, so the ranking confidence is the best model's mean pLDDT.
            report.mean_plddt = (ranking.get("plddts") or {}).get(report.best_model)
            report.ptm = (ranking.get("ptms") or {}).get(report.best_model)
    elif summary.get("status") == "failed":
        report.status = "failed"
        report.failure_reason = summary.get("failure_reason")
    return report


def collect(out_dir: str | Path) -> list[TargetReport]:
    """Reports of every target of the batch in `out_dir`, sorted by id."""
    from af2cpu.predict import MARKER

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(f"{out_dir} is not a folder; pass the --out folder of af2cpu predict")
    summaries = _batch_summary(out_dir)
    if not (out_dir / MARKER).exists() and not summaries:
        raise InputError(f"{out_dir} is not an af2cpu output folder (no {MARKER}, no summary.json)")
    ids = {p.parent.name for p in out_dir.glob("*/target.json")} | set(summaries)
    return [target_report(out_dir / target_id, target_id, summaries.get(target_id)) for target_id in sorted(ids)]


def _stage_names(reports: list[TargetReport]) -> list[str]:
    return sorted({name for r in reports for name in r.stage_seconds})


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return " ".join(str(value).split())


def report_csv(reports: list[TargetReport]) -> str:
    """One row per target; one `<stage>_s` column per stage seen in the batch."""
    stages = _stage_names(reports)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["target_id", "status", "length", "best_model", "mean_plddt", "ptm", "total_s",
                     *[f"{stage}_s" for stage in stages], "failure_reason"])
    for r in reports:
        writer.writerow([r.target_id, r.status, _cell(r.length), _cell(r.best_model), _cell(r.mean_plddt),
                         _cell(r.ptm), _cell(r.total_seconds), *[_cell(r.stage_seconds.get(s)) for s in stages],
                         _cell(r.failure_reason)])
    return buffer.getvalue()


def report_json(reports: list[TargetReport]) -> str:
    counts = {status: sum(r.status == status for r in reports) for status in ("done", "failed", "pending")}
    targets = [{**dataclasses.asdict(r), "total_seconds": r.total_seconds} for r in reports]
    return json.dumps({"counts": counts, "targets": targets}, indent=2) + "\n"


def report_table(reports: list[TargetReport]) -> str:
    """The terminal table: status, best model and confidence, total time, the slowest stage."""
    rows = [("target", "status", "length", "best model", "pLDDT", "pTM", "time (s)", "slowest stage / reason")]
    for r in reports:
        slowest = max(r.stage_seconds.items(), key=lambda item: item[1], default=None)
        note = r.failure_reason if r.status == "failed" else (f"{slowest[0]} {slowest[1]:.1f} s" if slowest else "")
        rows.append((r.target_id, r.status, _cell(r.length), r.best_model or "",
                     f"{r.mean_plddt:.1f}" if r.mean_plddt is not None else "",
                     f"{r.ptm:.3f}" if r.ptm is not None else "", f"{r.total_seconds:.1f}", _cell(note)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    counts = {s: sum(r.status == s for r in reports) for s in ("done", "failed", "pending")}
    lines.append(f"{len(reports)} target(s): {counts['done']} done, {counts['failed']} failed, "
                 f"{counts['pending']} pending")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def write_report(out_dir: str | Path) -> list[TargetReport]:
    """Collect the batch's reports and write ``report.csv`` and ``report.json`` (atomically)."""
    from af2cpu.outputs import atomic_write_text

    reports = collect(out_dir)
    atomic_write_text(Path(out_dir) / "report.csv", report_csv(reports))
    atomic_write_text(Path(out_dir) / "report.json", report_json(reports))
    return reports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="DIR", help="the --out folder of af2cpu predict (or of a job array)")


def run(args: argparse.Namespace) -> int:
    reports = write_report(args.out)
    print(report_table(reports), end="")
    print(f"written: {Path(args.out) / 'report.csv'}, {Path(args.out) / 'report.json'}")
    return 0
