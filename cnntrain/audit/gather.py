"""The audit's Pool: every labelled file of a config's data, split as training splits it."""

import logging
from pathlib import Path

import numpy as np
import yaml
from omegaconf import DictConfig

from cnntrain.audit.folds import QUIET, for_folds, names_data_source
from cnntrain.audit.pool import Pool
from cnntrain.core.checkpoint import BEST, checkpoint_file, load_checkpoint, saved_config
from cnntrain.core.errors import UserError
from cnntrain.core.overrides import override_key
from cnntrain.core.safe_text import printable
from cnntrain.data.known import open_listing, open_splits
from cnntrain.data.limits import limits_of
from cnntrain.data.listing import SplitOptions, listing_splits, table_key
from cnntrain.data.sources import Splits
from cnntrain.data.splits import stratified_split
from cnntrain.trained.eval import eval_config, use_run_split

log = logging.getLogger(__name__)
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"  # in a run folder: the command's overrides


def is_data_override(override: str) -> bool:
    """`data=…`, `data.*` and `paths.*`: what names the data (the rest is for the fold jobs)."""
    return override_key(override).split(".")[0] in ("data", "paths")


def run_audit_config(run_dir: Path, fresh: DictConfig, overrides: list[str]) -> DictConfig:
    """The config of the run at `run_dir` as its checkpoint saved it, with this machine's paths
    and the data `overrides` (the run's own splits.csv when they name no other data), as
    cnntrain-eval reads a run."""
    path = checkpoint_file(run_dir, BEST, "RUN_DIR")
    cfg = eval_config(saved_config(load_checkpoint(path), path), fresh, overrides)
    use_run_split(cfg, Path(run_dir), overrides)
    return cfg


def run_overrides(run_dir: Path) -> list[str]:
    """The overrides the run was started with (RUN/.hydra/overrides.yaml, read as plain data)
    that its fold jobs may take (folds.for_folds: the file is what anyone could have written),
    the others named in one line; none when the file is missing."""
    path = Path(run_dir) / OVERRIDES_FILE
    if not path.is_file():
        return []
    try:
        found = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a YAML list of overrides ({e}); fix or remove it") from e
    if not isinstance(found, list) or not all(isinstance(o, str) for o in found or []):
        raise UserError(f"{path} is not a YAML list of overrides; fix or remove it")
    # The data's source and the trackers are set anew for every fold job: dropping them is no news.
    replaced = {override_key(o) for o in QUIET}
    ignored = [o for o in found if not for_folds(o) and not names_data_source(override_key(o))
               and override_key(o) not in replaced]  # fmt: skip
    if ignored:
        log.info("ignored from %s: %s (the fold jobs train on the audited files, and take only "
                 "model, optimizer, scheduler, loss, trainer and shared data settings)", path,
                 " ".join(printable(o) for o in ignored))  # fmt: skip
    return [o for o in found if for_folds(o)]


def data_pool(cfg: DictConfig, overrides: list[str]) -> Pool:
    """Every labelled image file of `cfg.data` with the split training gives it (the data's own,
    the tool's, or data.splits'; val carved from train as data.val_split says), listed without
    decoding any; `overrides`: a run's own for its fold jobs, kept in the Pool."""
    d = cfg.data
    listed = open_listing(d, Path(cfg.paths.cache_dir).expanduser())
    if listed is not None:
        found = listing_splits(*listed, SplitOptions.of(d), limits_of(d))
        root = listed[0].root
    else:
        found = open_splits(d, cfg.paths.data_dir, cfg.paths.cache_dir)
        root = Path(found.origin)
    refuse_arrays(found, d.name)
    if found.multi_label:
        raise UserError(
            f"{found.origin} gives images several labels; cnntrain-audit checks data of one label "
            "per image (its label issues rank one class per image): audit a single-label copy"
        )
    roles = split_roles(found, d)
    root = root.absolute()
    files, names, labels, splits = [], [], [], []
    for split, source in found.splits.items():
        for i, file in enumerate(source.files):
            path = Path(file).absolute()
            files.append(path)
            names.append(table_key(str(path), root))
            labels.append(int(source.targets[i]))
            splits.append(roles[split][i])
    return Pool(root, files, names, labels, splits, list(found.classes), list(overrides))


def refuse_arrays(found: Splits, name: str) -> None:
    """Data held as pixel arrays (torchvision's format, idx files) has no files to audit."""
    if any(source.files is None for source in found.splits.values()):
        raise UserError(
            f"data.name={name} is held as pixel arrays ({found.origin}), not image files; audit "
            "a folder of files instead: data=imagefolder data.root=PATH"
        )


def split_roles(found: Splits, d) -> dict[str, list[str]]:
    """Each file's split, per split of `found`: its own, but the part of train that training
    holds out for validation (data.val_split, seeded by data.split_seed: selection.partition's
    draw) is `val` when the data has no val split."""
    roles = {split: [split] * len(source) for split, source in found.splits.items()}
    if "val" not in found.splits and d.val_split > 0:
        targets = found.splits["train"].targets
        _, held_out = stratified_split(np.asarray(targets), d.val_split, d.split_seed)
        for i in held_out:
            roles["train"][i] = "val"
    return roles
