"""Config plumbing: the resolvers conf/ uses, run folders, and validation before any work."""

import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnntrain.core.checks import boolean, check, format_value, integer, number, one_of, optional
from cnntrain.core.device import check_device
from cnntrain.core.errors import UserError
from cnntrain.core.extras import require
from cnntrain.core.spec import CHANNELS, MAX_SIDE
from cnntrain.data.augment.options import read_options
from cnntrain.data.hf import is_hub_id
from cnntrain.data.limits import PILLOW_HARD_STOP
from cnntrain.data.listing import LABEL_JOIN
from cnntrain.data.mosaic import mosaic_options
from cnntrain.data.sources import check_root
from cnntrain.models import check_model_options
from cnntrain.reporting.cam_methods import CAM_METHODS
from cnntrain.training.budget import ALLOWED as BUDGET_FORMS
from cnntrain.training.budget import is_budget
from cnntrain.training.optim import check_scheduler_name
from cnntrain.training.state import MONITORS


def device_name(v) -> bool:
    return v in ("auto", "cpu", "cuda") or bool(re.fullmatch(r"cuda:\d+", str(v)))


def image_size(v) -> bool:
    side = integer(1, MAX_SIDE)
    if v is None or side(v):
        return True
    return isinstance(v, ListConfig | list) and len(v) == 2 and all(side(s) for s in v)


def positive_list(v) -> bool:
    return v is None or (
        isinstance(v, ListConfig | list) and all(number(0, lo_open=True)(x) for x in v)
    )


def freeze_choice(v) -> bool:
    if v in ("none", "backbone"):
        return True
    return isinstance(v, ListConfig | list) and bool(v) and all(isinstance(x, str) and x for x in v)


def options_of(rules: dict, nullable: bool = False):
    """A mapping of exactly `rules`' keys, each value valid by its rule (or null if `nullable`)."""

    def valid(v) -> bool:
        if v is None:
            return nullable
        return (
            isinstance(v, DictConfig | dict)
            and v.keys() == rules.keys()
            and all(rule(v[key]) for key, rule in rules.items())
        )

    return valid


lookahead_options = options_of(
    {"every": integer(1), "decay": number(0, 1, lo_open=True), "power": number(0),
     "after_epochs": integer(0)},
    nullable=True,
)  # fmt: skip
early_stopping_options = options_of({"patience": optional(integer(0)), "min_delta": number(0)})


def existing_path(v) -> bool:
    return isinstance(v, str) and Path(v).expanduser().exists()


def existing_file(v) -> bool:
    return isinstance(v, str) and Path(v).expanduser().is_file()


def column_name(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def label_column_list(v) -> bool:
    """data.label_columns: distinct column names, none holding the labels' separator."""
    return (isinstance(v, ListConfig | list) and bool(v) and len(set(v)) == len(v)
            and all(column_name(c) and LABEL_JOIN not in c for c in v))  # fmt: skip


def hf_split_names(v) -> bool:
    """data.hf_splits: the dataset's split name for train, and for val and test (or null)."""
    return (
        isinstance(v, DictConfig | dict)
        and v.keys() == {"train", "val", "test"}
        and column_name(v["train"])
        and all(optional(column_name)(v[s]) for s in ("val", "test"))
    )


# torch.compile's modes (`trainer.compile`; true = default); CUDA graphs in reduce-overhead.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# results.json fields a sweeper may optimize (`optimized_metric`); test/* only if you must.
OPTIMIZABLE = ("best_val/acc", "final_val/acc", "test/acc", "test/balanced_acc", "test/top5_acc",
               "test/loss", "train_time_s", "best_val/mAP", "test/mAP")  # fmt: skip

# (key, check, what is allowed): checked before any work; a missing optional key is skipped.
RULES = [
    ("optimized_metric", one_of(*OPTIMIZABLE), "one of " + ", ".join(OPTIMIZABLE)),
    ("trainer.epochs", integer(1), "an integer ≥ 1"),
    ("trainer.time_budget", is_budget, BUDGET_FORMS),
    ("trainer.seed", integer(0), "an integer ≥ 0"),
    ("trainer.device", device_name, "auto, cpu, cuda or cuda:N"),
    ("trainer.precision", one_of("auto", "32", "tf32", "bf16", "16"), "auto, 32, tf32, bf16 or 16"),
    ("trainer.channels_last", boolean, "true or false"),
    (
        "trainer.compile",
        lambda v: boolean(v) or v in COMPILE_MODES,
        "false, true or a torch.compile mode: " + ", ".join(COMPILE_MODES),
    ),
    (
        "trainer.target_accuracy",
        optional(number(0, 1, lo_open=True)),
        "null or a fraction in (0, 1]",
    ),
    ("trainer.monitor", one_of("auto", *MONITORS), "auto or one of " + ", ".join(MONITORS)),
    (
        "trainer.thresholds",
        lambda v: v == "f1" or number(0, 1, lo_open=True, hi_open=True)(v),
        "f1 (each label's, tuned on the validation split) or a probability in (0, 1)",
    ),
    ("data.task", one_of("auto", "single", "multi"), "auto, single or multi"),
    (
        "data.label_separator",
        optional(lambda v: isinstance(v, str) and v != ""),
        "null or the text between a row's labels, e.g. '|'",
    ),
    (
        "data.label_columns",
        optional(label_column_list),
        "null or a list of distinct 0/1 column names without '|', one per label: [cat, dog]",
    ),
    (
        "trainer.early_stopping",
        early_stopping_options,
        "{patience: null, 0 (off) or epochs ≥ 1, min_delta: a number ≥ 0}",
    ),
    ("trainer.accumulate", integer(1), "an integer ≥ 1 (batches per optimizer step)"),
    ("trainer.grad_clip", optional(number(0, lo_open=True)), "null or a number > 0"),
    (
        "trainer.ema",
        optional(number(0, 1, lo_open=True, hi_open=True)),
        "null or a decay in (0, 1)",
    ),
    (
        "trainer.tta",
        lambda v: boolean(v) or v == "flip_translate",
        "true (flip), false or flip_translate (flip × three 1 px shifts)",
    ),
    (
        "trainer.lookahead",
        lookahead_options,
        "null or {every: steps ≥ 1, decay: (0, 1], power: ≥ 0, after_epochs: epochs ≥ 0}",
    ),
    ("trainer.checkpoint_every", integer(1), "an integer ≥ 1 (epochs)"),
    ("trainer.save_top_k", integer(0), "an integer ≥ 0 (best checkpoints kept; 0: none)"),
    ("trainer.progress", lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    ("trainer.progress_every_s", number(0), "a number of seconds ≥ 0 (0: no progress lines)"),
    ("trainer.plots", boolean, "true or false"),
    ("trainer.cam", one_of(*CAM_METHODS, "none"), ", ".join(CAM_METHODS) + " or none"),
    (
        "trainer.cam_layer",
        optional(lambda v: isinstance(v, str) and bool(v)),
        "null or a module name from the run's summary.txt",
    ),
    ("trainer.devices", integer(1), "an integer ≥ 1 (processes on this machine)"),
    ("trainer.sync_bn", lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    ("data.val_split", number(0, 1, hi_open=True), "a fraction in [0, 1)"),
    ("data.split_seed", integer(0), "an integer ≥ 0"),
    ("data.test_split", number(0, 1, hi_open=True), "a fraction in [0, 1)"),
    ("data.splits", optional(existing_file), "null or an existing splits.csv (path,class,split)"),
    ("data.labels", existing_file, "an existing label file (.csv, .tsv, .txt, .parquet)"),
    ("data.path_column", column_name, "a column name"),
    ("data.label_column", column_name, "a column name"),
    ("data.split_column", optional(column_name), "null or a column name"),
    ("data.image_column", column_name, "a column name"),
    ("data.hf_splits", hf_split_names, "{train: a split name, val: a name or null, test: …}"),
    ("data.batch_size", integer(1), "an integer ≥ 1"),
    ("data.eval_batch_size", integer(1), "an integer ≥ 1"),
    ("data.num_workers", integer(0), "an integer ≥ 0"),
    ("data.max_train_samples", optional(integer(1)), "null or an integer ≥ 1"),
    ("data.max_eval_samples", optional(integer(1)), "null or an integer ≥ 1"),
    ("data.loader", one_of("auto", "tensor", "dataloader"), "auto, tensor or dataloader"),
    ("data.memory_budget_gb", number(0, lo_open=True), "a number of GiB > 0"),
    ("data.sampler", one_of("random", "balanced"), "random or balanced"),
    ("data.on_bad_image", one_of("skip", "error"), "skip or error"),
    ("data.max_file_mb", number(0, lo_open=True), "a number of MiB > 0"),
    (
        "data.max_image_pixels",
        integer(1, PILLOW_HARD_STOP),
        f"an integer of pixels in [1, {PILLOW_HARD_STOP}] (Pillow refuses larger images)",
    ),
    ("data.channels", optional(lambda v: v in CHANNELS), "null, 1 or 3"),
    ("data.image_size", image_size, f"null, a side in px, or [H, W]; 1 to {MAX_SIDE} px"),
    (
        "data.resize",
        optional(integer(1, MAX_SIDE)),
        f"null or the short side's px before the crop, 1 to {MAX_SIDE}",
    ),
    (
        "data.interpolation",
        optional(one_of("bilinear", "bicubic", "nearest")),
        "null, bilinear, bicubic or nearest",
    ),
    ("data.download", boolean, "true or false"),
    (
        "data.mean",
        optional(lambda v: isinstance(v, ListConfig | list)),
        "null or one value per channel",
    ),
    ("data.std", positive_list, "null or one positive value per channel"),
    ("optimizer.lr", number(0, lo_open=True), "a learning rate > 0"),
    ("optimizer.weight_decay", number(0), "a number ≥ 0"),
    ("optimizer.momentum", number(0, 1, hi_open=True), "a number in [0, 1)"),
    ("optimizer.norm_lr_scale", number(0, lo_open=True), "a factor > 0"),
    ("optimizer.head_lr_scale", number(0, lo_open=True), "a factor > 0"),
    ("model.freeze", freeze_choice, "none, backbone or a list of module names like [conv1,layer1]"),
    ("model.init_from", optional(existing_path), "null or an existing run folder or .pt file"),
    ("model.weights", optional(lambda v: isinstance(v, str)), "null, a weights name or a file"),
    ("scheduler.warmup_epochs", number(0), "a number of epochs ≥ 0"),
    ("scheduler.step_size", integer(1), "an integer ≥ 1 (epochs)"),
    ("scheduler.gamma", number(0, 1, lo_open=True), "a factor in (0, 1]"),
    ("scheduler.min_lr", number(0), "a number ≥ 0"),
    ("scheduler.pct_start", number(0, 1, lo_open=True, hi_open=True), "a fraction in (0, 1)"),
    ("scheduler.div_factor", number(1), "a number ≥ 1"),
    ("scheduler.final_div_factor", number(1), "a number ≥ 1"),
    ("scheduler.anneal_strategy", one_of("cos", "linear"), "cos or linear"),
    ("scheduler.start_factor", number(0, 1, lo_open=True), "a fraction of the lr in (0, 1]"),
    ("scheduler.end_factor", number(0, 1, lo_open=True), "a fraction of the lr in (0, 1]"),
    ("loss.label_smoothing", number(0, 1, hi_open=True), "a fraction in [0, 1)"),
    ("loss.class_weights", optional(one_of("auto")), "null or auto"),
    ("loss.gamma_neg", number(0), "a number ≥ 0"),
    ("loss.gamma_pos", number(0), "a number ≥ 0"),
    ("loss.clip", number(0, 1, hi_open=True), "a probability shift in [0, 1)"),
    ("loss.eps", number(0, lo_open=True), "a number > 0"),
    (
        "logger.wandb.mode",
        optional(one_of("online", "offline", "disabled")),
        "null (W&B's own choice), online, offline or disabled",
    ),
]
ABSENT = object()


def validate(cfg: DictConfig) -> None:
    """Refuse impossible values, naming the key, the value and what is allowed (a UserError)."""
    for key, valid, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is not ABSENT:
            check(key, value, valid, allowed)
    check_device(str(cfg.trainer.device))
    check_data_source(cfg.data)
    read_options(cfg.data.augment)  # raises on a bad data.augment value
    for key, value in (cfg.data.get("eval_augment") or {}).items():
        raise UserError(
            f"data.eval_augment.{key}={format_value(value)} would make evaluation random "
            "(augmenting the test set); evaluation sees each image as is; for flip test-time "
            "augmentation use trainer.tta=true"
        )
    check_model_options(cfg.model, weights_read=not cfg.get("resume"))
    check_scheduler_name(cfg.scheduler)
    check_installed(cfg)


def check_data_source(d: DictConfig) -> None:
    """The data group's required source is given and exists (a Hub id aside); data=hf's extra is
    installed; data=mosaic's keys are whole numbers of what it builds (before any work)."""
    if d.name == "imagefolder" and not d.root:
        raise UserError(
            "data=imagefolder needs data.root=PATH (a folder or archive: train/<class>/… or "
            "<class>/…)"
        )
    if d.name == "csv" and not d.get("labels"):
        raise UserError("data=csv needs data.labels=FILE (a .csv, .tsv, .txt or .parquet file)")
    if d.name == "mosaic":  # before the root check: data=mosaic refuses a root in its own words
        mosaic_options(d)
        return
    if d.name == "hf":
        if not d.root:
            raise UserError("data=hf needs data.root=PATH (a save_to_disk folder) or owner/name")
        require("datasets", "hf", "data=hf")
    if d.root and not (d.name == "hf" and is_hub_id(d.root)):
        check_root(d.root)


# What a config may choose that needs an extra: (target or model name, module, extra).
NEEDS_EXTRA = [("cnntrain.loggers.mlflow.MLflowLogger", "mlflow", "mlflow"),
               ("cnntrain.loggers.wandb.WandbLogger", "wandb", "wandb")]  # fmt: skip


def check_installed(cfg: DictConfig) -> None:
    """Refuse a tracker whose package is not installed, in one line naming the pip command,
    before any data or model is built."""
    for name, tracker in (cfg.get("logger") or {}).items():
        target = tracker.get("_target_") if isinstance(tracker, DictConfig) else None
        for needing, module, extra in NEEDS_EXTRA:
            if target == needing:
                require(module, extra, f"logger={name}")


def unknown_keys(cfg: DictConfig, reference: DictConfig, prefix: str = "") -> list[str]:
    """Keys of `cfg` that `reference` (the same groups, no value overrides) does not have.

    An empty mapping in the reference (like data.eval_augment) is left to `validate`.
    """
    found = []
    for key, value in cfg.items_ex(resolve=False):
        path = f"{prefix}{key}"
        if key not in reference:
            found.append(path)
        elif (
            isinstance(value, DictConfig)
            and isinstance(reference[key], DictConfig)
            and reference[key]
        ):
            found += unknown_keys(value, reference[key], f"{path}.")
    return found
