"""Where a batch stands — per target done, failed or pending, stage times, best model (`af2cpu report`).

Works from the output folder alone (no FASTA needed), so it can run while array tasks are still
writing into it, or long after: targets are the folders with a ``target.json`` plus the targets of
``summary.json`` (a target refused before its folder was made, e.g. too long for the memory, is only
there). A target is *done* when its final outputs exist (``ranking_debug.json``, ``ranked_0.pdb``,
``timings.json``), *failed* when the batch summary says so and they do not, and *pending* otherwise.
Stage times come from the stage records, completed by ``timings.json`` (which lists the recorded
stages of a finished target, so it still tells their times if records were removed); columns follow the declared stage order (``af2cpu.scheduler.stages``). Writes
``report.csv`` and ``report.json`` and returns the rows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

from af2cpu.errors import InputError
from af2cpu.io import atomic_write_text
from af2cpu.layout import BatchDir, TargetDir
from af2cpu.preprocessing.inputs import CHAIN_SEPARATOR
from af2cpu.scheduler.stages import stage_sort_key
from af2cpu.summary import TargetSummary, status_counts


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def stage_seconds(folder: TargetDir) -> dict[str, float]:
    """{stage: seconds} from the stage records, plus the stages only ``timings.json`` knows."""
    seconds = {}
    for path in folder.stage_records():
        record = _read_json(path)
        if record and "started" in record and "finished" in record:
            seconds[record.get("stage", folder.stage_of_record(path))] = round(
                float(record["finished"]) - float(record["started"]), 3)
    for name, entry in (_read_json(folder.timings) or {}).items():
        if name not in seconds and isinstance(entry, dict) and "duration" in entry:
            seconds[name] = round(float(entry["duration"]), 3)
    return seconds


def target_report(folder: TargetDir, target_id: str, summary: dict | None) -> TargetSummary:
    """The report of one target from its folder (which may not exist) and its batch-summary entry."""
    summary = summary or {}
    info = folder.read_info() or {}
    # A complex's sequence is its chains' joined by ':': its length is their residues.
    length = len(info["sequence"].replace(CHAIN_SEPARATOR, "")) if "sequence" in info else summary.get("length")
    seconds = stage_seconds(folder)
    if folder.is_finished():
        ranking = _read_json(folder.ranking_debug) or {}
        order = ranking.get("order") or []
        best = order[0] if order else summary.get("best_model")
        if best == summary.get("best_model") and summary.get("mean_plddt") is not None:
            mean_plddt, ptm = summary["mean_plddt"], summary.get("ptm")
        else:
            # Monomers rank by mean pLDDT, so the ranking confidence is the best model's mean pLDDT.
            mean_plddt = (ranking.get("plddts") or {}).get(best) if best else None
            ptm = (ranking.get("ptms") or {}).get(best) if best else None
        return TargetSummary(target_id, "done", length=length, best_model=best, mean_plddt=mean_plddt, ptm=ptm,
                             iptm=summary.get("iptm"), untrained_params=bool(ranking.get("untrained_params")),
                             stage_seconds=seconds)
    if summary.get("status") in ("failed", "skipped"):
        return TargetSummary(target_id, summary["status"], length=length, failure_reason=summary.get("failure_reason"),
                             stage_seconds=seconds)
    return TargetSummary(target_id, "pending", length=length, stage_seconds=seconds)


def collect(out_dir: str | Path) -> list[TargetSummary]:
    """Reports of every target of the batch in `out_dir`, sorted by id."""
    batch = BatchDir(out_dir)
    if not batch.path.is_dir():
        raise InputError(f"{batch.path} is not a folder; pass the --out folder of af2cpu predict")
    payload = _read_json(batch.summary_json) or {}
    summaries = {entry["target_id"]: entry for entry in payload.get("targets", []) if "target_id" in entry}
    if not batch.is_af2cpu() and not summaries:
        raise InputError(f"{batch.path} is not an af2cpu output folder (no {batch.marker.name}, no summary.json)")
    ids = batch.target_ids() | set(summaries)
    return [target_report(batch.target(target_id), target_id, summaries.get(target_id)) for target_id in sorted(ids)]


def _stage_names(reports: list[TargetSummary]) -> list[str]:
    return sorted({name for r in reports for name in r.stage_seconds}, key=stage_sort_key)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return " ".join(str(value).split())


def report_csv(reports: list[TargetSummary]) -> str:
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


def report_json(reports: list[TargetSummary]) -> str:
    targets = [{**dataclasses.asdict(r), "total_seconds": r.total_seconds} for r in reports]
    return json.dumps({"counts": status_counts(reports), "targets": targets}, indent=2) + "\n"


def report_table(reports: list[TargetSummary]) -> str:
    """The terminal table: status, best model and confidence, total time, the slowest stage."""
    rows = [("target", "status", "length", "best model", "pLDDT", "pTM", "time (s)", "slowest stage / reason")]
    for r in reports:
        slowest = max(r.stage_seconds.items(), key=lambda item: item[1], default=None)
        slowest_text = f"{slowest[0]} {slowest[1]:.1f} s" if slowest else ""
        note = r.failure_reason if r.status in ("failed", "skipped") else slowest_text
        rows.append((r.target_id, r.status, _cell(r.length), r.best_model or "",
                     f"{r.mean_plddt:.1f}" if r.mean_plddt is not None else "",
                     f"{r.ptm:.3f}" if r.ptm is not None else "", f"{r.total_seconds:.1f}", _cell(note)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    counts = status_counts(reports)
    lines.append(f"{len(reports)} target(s): {counts['done']} done, {counts['failed']} failed, "
                 f"{counts['pending']} pending" + (f", {counts['skipped']} skipped" if counts["skipped"] else ""))
    return "\n".join(line.rstrip() for line in lines) + "\n"


def write_report(out_dir: str | Path) -> list[TargetSummary]:
    """Collect the batch's reports and write ``report.csv`` and ``report.json`` (atomically)."""
    reports = collect(out_dir)
    batch = BatchDir(out_dir)
    atomic_write_text(batch.report_csv, report_csv(reports))
    atomic_write_text(batch.report_json, report_json(reports))
    return reports
