"""`cnntrain-audit [RUN_DIR] [--out DIR] [--folds K] [--near-bits B] [overrides…]`: a data audit."""

from pathlib import Path

from cnntrain.audit.duplicates import DEFAULT_NEAR_BITS
from cnntrain.audit.gather import data_pool, is_data_override, run_audit_config, run_overrides
from cnntrain.audit.page import REPORT_FILE
from cnntrain.audit.run import AuditOptions, audit, require_extras
from cnntrain.cli.common import ArgumentParser, fail, log_to_console, preflight
from cnntrain.config.resolvers import register_resolvers
from cnntrain.core.errors import UserError
from cnntrain.core.files import refuse_links
from cnntrain.data.limits import limits_of

DESCRIPTION = f"""Audit a dataset: exact duplicates (equal decoded pixels) and near duplicates
(perceptual hashes, pHash, at most --near-bits of 64 bits apart) within and across train, val
and test, with the test images that have one in train (a leak); unreadable files, classes too
small for every split, images far from the others in size or mode; with --folds K, likely label
errors (K models trained as one sweep, each scoring the images it did not train on; cleanlab
ranks them; the fold jobs train on the audited files). Give a run folder (its data, its split,
its model, optimizer, scheduler, loss and trainer overrides for the fold jobs; writes
RUN_DIR/audit/) or the data as for training, e.g. `data=imagefolder data.root=PATH --out DIR`.
Other overrides (trainer.epochs=5, hydra/launcher=joblib…) go to the fold jobs. Writes
report.html, summary.json, duplicates.csv, files.csv (and label_issues.csv, folds/) and prints
the report's path as its last line. Default --near-bits: {DEFAULT_NEAR_BITS}."""


def main() -> None:
    """The `cnntrain-audit` console script."""
    parser = ArgumentParser(prog="cnntrain-audit", description=DESCRIPTION)
    parser.add_argument("arguments", nargs="*", metavar="[RUN_DIR] KEY=VALUE",
                        help="a run folder (optional), then overrides")  # fmt: skip
    parser.add_argument("--out", type=Path, metavar="DIR", help="default: RUN_DIR/audit")
    parser.add_argument("--folds", type=int, metavar="K", help="rank likely label errors")
    parser.add_argument("--near-bits", type=int, default=DEFAULT_NEAR_BITS, metavar="B")
    args = parser.parse_intermixed_args()
    run_dir, overrides = split_arguments(args.arguments)
    if args.folds is not None and args.folds < 2:
        parser.error(f"--folds {args.folds}: K-fold needs K ≥ 2 (each model leaves one fold out)")
    if not 0 <= args.near_bits < 64:
        parser.error(f"--near-bits {args.near_bits}: give a number of bits from 0 to 63")
    if run_dir is None and args.out is None:
        parser.error("give a run folder, or the data's overrides and --out DIR")
    register_resolvers()
    log_to_console()
    try:
        summary, folder = audit_command(run_dir, overrides, args.out, args.folds, args.near_bits)
    except UserError as e:
        fail(str(e))
    for line in summary_lines(summary):
        print(line, flush=True)
    print(folder / REPORT_FILE, flush=True)


def split_arguments(arguments: list[str]) -> tuple[Path | None, list[str]]:
    """(RUN_DIR, overrides): the first argument is a run folder when it is no `key=value`."""
    if arguments and "=" not in arguments[0] and not arguments[0].startswith(("~", "+")):
        return Path(arguments[0]), arguments[1:]
    return None, arguments


def audit_command(run_dir: Path | None, overrides: list[str], out: Path | None,
                  folds: int | None, near_bits: int) -> tuple[dict, Path]:  # fmt: skip
    """(the summary, the audit folder) of the command's audit."""
    require_extras(folds)  # seconds before the data is listed, not after
    cfg = preflight([*overrides, "paths.output_dir=unused"])
    data_overrides = [o for o in overrides if is_data_override(o)]
    if run_dir is not None:
        if not run_dir.is_dir():
            raise UserError(f"RUN_DIR={str(run_dir)!r} is not a folder; give a cnntrain run folder")
        cfg = run_audit_config(run_dir, cfg, data_overrides)
    # Only fold jobs take a run's own overrides (this command's go to them as `extra`).
    base = run_overrides(run_dir) if run_dir is not None and folds else []
    folder = out if out is not None else run_dir / "audit"
    prepare_folder(folder)
    pool = data_pool(cfg, base)
    options = AuditOptions(
        near_bits=near_bits,
        folds=folds,
        extra=overrides,
        seed=int(cfg.data.split_seed),
        workers=max(1, int(cfg.data.num_workers)),
        max_pixels=limits_of(cfg.data).max_image_pixels,
    )
    return audit(pool, folder, options), folder


def prepare_folder(folder: Path) -> None:
    """The audit folder, made if needed; refused when it, or anything in it, is a link (a run
    folder may come from elsewhere: a link would take what the audit writes out of it)."""
    refuse_links(folder.parent, [folder.name])
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file; give a folder (made if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"could not make {folder}: {e.strerror or e}; fix permissions") from e


def summary_lines(s: dict) -> list[str]:
    """What the audit found, in a few lines (the report's path follows, as the last line)."""
    splits = ", ".join(f"{k} {n:,}" for k, n in s["images_by_split"].items())
    share, seen = (
        s["test_with_train_near_duplicate_percent"],
        s["test_with_train_or_val_near_duplicate"],
    )
    lines = [
        f"audited {s['images']:,} images ({splits}) of {s['classes']} classes in {s['time_s']} s",
        f"duplicates: {s['exact_pairs']:,} exact pair(s), {s['near_pairs']:,} near pair(s) "
        f"(pHash ≤ {s['near_bits']} bits); test images with one in train: "
        f"{s['test_with_train_near_duplicate']:,} of {s['test_images']:,}"
        + (f" ({share:.2f}%); in train or val: {seen:,}" if share is not None else ""),
        f"file problems: {s['unreadable']} unreadable, {s['small_classes']} small class(es), "
        f"{s['odd_size']} odd size, {s['odd_channels']} odd channels",
    ]
    if s["label_issues"] is not None:
        lines.append(f"likely label errors: {s['label_issues']:,} (label_issues.csv); the fold "
                     f"models got {s['fold_accuracy']:.1%} of the images they did not see right"
                     + (" — too few to trust the ranking: train them longer (trainer.epochs=…)"
                        if weak(s["fold_accuracy"], s["classes"]) else ""))  # fmt: skip
    return lines


def weak(accuracy: float, classes: int) -> bool:
    """Fold models too close to chance (1/classes) for their disagreements to point at label
    errors: below 2/(classes + 1), the accuracy at which right answers are twice as frequent as
    any one wrong class's when mistakes spread evenly over the others."""
    return accuracy < 2 / (classes + 1)


if __name__ == "__main__":
    main()
