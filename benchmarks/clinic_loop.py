"""One simulated clinic closes the loop: its series through the node, corrections back, fine-tune, new series.

The clinic (``vacseg_monai/clinic.py``) scans generator v1 phantoms on a couch with a foam
mattress, counts the mattress as Couch and draws the Vacbag with a 3 mm margin. Its 8
training series go through a node serving the shipped model; the physicist's corrected
structure sets (the clinic's truth) come back with DCMTK storescu and are measured; they
become training data; the shipped weights are fine-tuned on them with a replay share of the
project's own phantoms (generator v1, seeds 0..9, the shipped model's training world);
the 5 new series go through a node serving the shipped model and one serving the
fine-tuned weights. Last, the project's held-out table (v1 seeds 1000..1004) of both models.
Writes ``<work>/clinic_loop.json`` and, with ``--update-docs``, the numbers into
docs/corrections.md.

    .venv/bin/python -m benchmarks.clinic_loop --work /tmp/clinic --update-docs
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from vacseg_monai.clinic import ClinicConventions, run_clinic_loop

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "corrections.md"
BEGIN, END = "<!-- clinic-loop:begin -->", "<!-- clinic-loop:end -->"
LABELS = ("Vacbag", "Couch", "Body")

logger = logging.getLogger("clinic_loop")


def _setup_argparser(args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/clinic/full"), help="scratch folder (emptied)")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=list(range(2000, 2008)))
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=list(range(3000, 3005)))
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    parser.add_argument("--n-slices", type=int, default=32, help="slices kept per series (default 32; 0: all)")
    parser.add_argument("--replay-patients", type=int, default=10, help="v1 phantoms 0.. to replay (default 10)")
    parser.add_argument("--replay-share", type=float, default=0.3, help="replayed share of slices (default 0.3)")
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--k-folds", type=int, default=8, help="k-fold split of the corrections (default 8)")
    parser.add_argument("--train-slice-stride", type=int, default=2)
    parser.add_argument("--heldout-seeds", type=int, nargs="*", default=list(range(1000, 1005)),
                        help="v1 held-out phantoms of the project's table (none: skip it)")
    parser.add_argument("--update-docs", action="store_true", help=f"write the numbers into {DOCS.name}")
    parser.add_argument("--diagram", type=Path, default=None,
                        help="only draw the picture of the loop there (e.g. docs/clinic_loop.png) and stop")
    return parser.parse_args(args)


_STEPS = (
    ("Planning system (TPS)", "exports the planning CT", "send_series.py / storescu"),
    ("DICOM node", "contours Vacbag, Couch, Body;\nRTSTRUCT back to the TPS", "serve_scp.py"),
    ("Physicist", "corrects the structure set in the TPS\nand sends it back (C-STORE)", "storescu RS.dcm"),
    ("Edit metrics", "Dice, surface Dice, HD95, volume,\nadded path length per structure", "corrections_report.py"),
    ("Training data", "node's CT + correction; labels it\ncontains (partial labels)", "corrections_to_training.py"),
    ("Fine-tune", "train.json + finetune.json,\nreplay of the project's phantoms", "monai.bundle run training"),
)


def draw_diagram(path: Path) -> Path:
    """Draw the loop as six boxes on a ring, the fine-tuned weights going back to the node."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(9.6, 5.4))
    ax.set_xlim(-1.75, 1.75)
    ax.set_ylim(-1.05, 1.05)
    ax.axis("off")
    angles = np.deg2rad(90 - 60 * np.arange(len(_STEPS)) + 30)
    centres = [(1.25 * np.cos(a), 0.78 * np.sin(a)) for a in angles]
    colours = ("#d9e8f5", "#fde2c8", "#e4f2dc", "#f6dbe7", "#e9e3f5", "#fff3c4")
    for (x, y), (title, text, command), colour in zip(centres, _STEPS, colours):
        ax.add_patch(FancyBboxPatch((x - 0.47, y - 0.2), 0.94, 0.4, boxstyle="round,pad=0.02", fc=colour, ec="#555"))
        ax.text(x, y + 0.12, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x, y - 0.01, text, ha="center", va="center", fontsize=7.5)
        ax.text(x, y - 0.15, command, ha="center", va="center", fontsize=7, family="monospace", color="#333")
    def edge(centre, towards):
        """The point where the line from ``centre`` to ``towards`` leaves the box at ``centre``."""
        d = np.subtract(towards, centre)
        t = min(0.5 / abs(d[0]) if d[0] else np.inf, 0.23 / abs(d[1]) if d[1] else np.inf)
        return tuple(np.add(centre, t * d))

    pairs = list(zip(centres, centres[1:])) + [(centres[-1], centres[1])]
    for start, end in pairs:
        ax.add_patch(FancyArrowPatch(edge(start, end), edge(end, start), arrowstyle="-|>", mutation_scale=14,
                                     connectionstyle="arc3,rad=-0.12", color="#444", lw=1.3))
    ax.text(-0.05, 0.3, "fine-tuned weights back to the node\n([processor_args] ckpt_path)", ha="center",
            va="center", fontsize=8, style="italic", color="#444")
    ax.text(0.0, -0.2, "the loop closes through the TPS:\nnothing new to learn for the physicist", ha="center",
            va="center", fontsize=8, color="#666")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _heldout(ckpt: Path | None, seeds: list[int], size: int) -> dict[str, float]:
    """Mean Dice per label of the project's held-out v1 table for one checkpoint."""
    from vacseg_monai.evaluation import PhantomSegmenter, evaluate_phantoms, summarise
    from vacseg_monai.paths import default_bundle_root

    rows = evaluate_phantoms(PhantomSegmenter(default_bundle_root(), ckpt_path=ckpt), seeds, size=size,
                             phantom_version=1)
    return {label: round(values["dice"][0], 4) for label, values in summarise(rows).items()}


def _per_case_table(title: str, results: list[dict]) -> list[str]:
    lines = [f"**{title}** (surface Dice at 2 mm / added path length in mm, per case)", "",
             "| case | " + " | ".join(LABELS) + " | node s |", "|---|" + "---:|" * (len(LABELS) + 1)]
    for result in results:
        rois = {roi["roi"]: roi for roi in result["entry"]["rois"]}
        cells = [f"{rois[n]['surface_dice']:.3f} / {rois[n]['added_path_mm']:.0f}" if n in rois else "-"
                 for n in LABELS]
        lines.append(f"| {result['patient']} | " + " | ".join(cells) + f" | {result['seconds']:.1f} |")
    return lines + [""]


def _markdown(result: dict, ns: argparse.Namespace, command: str) -> str:
    base, tuned = result["eval_baseline_summary"], result["eval_tuned_summary"]
    fall = 1.0 - tuned["all"]["added_path_mm"] / base["all"]["added_path_mm"]
    lines = [f"Run on {result['date']} ({result['machine']}), {result['total_s']:.0f} s in all, by", "",
             f"    {command}", ""]
    lines += _per_case_table("The 8 training series, shipped model", result["train_round"])
    ft = result["finetune"]
    lines += [f"Training data: {result['training_data']['converted']} patients, annotated "
              + "; ".join(sorted({", ".join(r["annotated_labels"]) for r in result["training_data"]["records"]
                                  if r["status"] == "converted"})) + ".",
              f"Fine-tuning: **{ft['seconds'] / 60:.1f} min** ({ns.max_epochs} epochs, lr {ns.learning_rate}, "
              f"{ns.k_folds}-fold split: {ns.k_folds - 1} corrections train, 1 validates, replay share "
              f"{ns.replay_share} of v1 phantoms 0..{ns.replay_patients - 1}), target < 20 min.", ""]
    lines += _per_case_table("The 5 new series, shipped model", result["eval_baseline"])
    lines += _per_case_table("The 5 new series, fine-tuned model", result["eval_tuned"])
    lines += ["| new series, mean | shipped | fine-tuned | target |", "|---|---:|---:|---|"]
    for name in ("Vacbag", "Couch"):
        lines.append(f"| {name} surface Dice at 2 mm | {base[name]['surface_dice']:.3f} | "
                     f"**{tuned[name]['surface_dice']:.3f}** | >= 0.95 |")
    lines.append(f"| added path length, all structures, 5 cases | {base['all']['added_path_mm']:.0f} mm | "
                 f"{tuned['all']['added_path_mm']:.0f} mm (**{100 * fall:.0f} % less**) | >= 50 % less |")
    held = result.get("heldout")
    if held:
        lines += ["", "| project's held-out table (v1 1000..1004), Dice | " + " | ".join(LABELS) + " |",
                  "|---|" + "---:|" * len(LABELS)]
        for key in ("shipped", "tuned"):
            lines.append(f"| {key} | " + " | ".join(f"{held[key][n]:.3f}" for n in LABELS) + " |")
        lines.append("| change (target: no drop > 0.01) | " + " | ".join(
            f"{held['tuned'][n] - held['shipped'][n]:+.3f}" for n in LABELS) + " |")
    return "\n".join(lines) + "\n"


def _update_docs(markdown: str) -> None:
    text = DOCS.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOCS.write_text(f"{head}{BEGIN}\n{markdown}{END}{tail}")


def main(args: list[str] | None = None) -> dict:
    """Run the loop; print and return the result."""
    ns = _setup_argparser(args)
    if ns.diagram is not None:
        return {"diagram": str(draw_diagram(ns.diagram))}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("pynetdicom", "vacseg_monai.service", "monai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from vacseg_monai.phantom import generate_dataset

    start = time.perf_counter()
    ns.work.mkdir(parents=True, exist_ok=True)
    replay = ns.work / f"replay_v1_{ns.size}"
    if not replay.is_dir():
        generate_dataset(replay, ns.replay_patients, seed=0, size=ns.size, progress=False, version=1)
    loop = ns.work / "loop"
    if loop.exists():
        raise SystemExit(f"{loop} exists; remove it or pass another --work.")
    overrides = {"max_epochs": ns.max_epochs, "learning_rate": ns.learning_rate, "k_folds": ns.k_folds,
                 "train_slice_stride": ns.train_slice_stride, "num_workers": 0}
    outcome = run_clinic_loop(loop, ns.train_seeds, ns.eval_seeds, size=ns.size, n_slices=ns.n_slices or None,
                              replay_dir=replay, replay_share=ns.replay_share,
                              finetune_overrides={k: str(v) for k, v in overrides.items()},
                              conventions=ClinicConventions())
    result = outcome.as_dict()
    if ns.heldout_seeds:
        result["heldout"] = {"shipped": _heldout(None, ns.heldout_seeds, ns.size),
                             "tuned": _heldout(outcome.finetune.ckpt_path, ns.heldout_seeds, ns.size)}
    result["total_s"] = time.perf_counter() - start
    result["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result["machine"] = f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores, no GPU used"
    (ns.work / "clinic_loop.json").write_text(json.dumps(result, indent=1, default=str))
    command = "python -m benchmarks.clinic_loop " + shlex.join(args if args is not None else sys.argv[1:])
    markdown = _markdown(result, ns, command)
    print(markdown)
    if ns.update_docs:
        _update_docs(markdown)
    return result


if __name__ == "__main__":
    main()
