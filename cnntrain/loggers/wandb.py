"""Weights & Biases: one W&B run per cnntrain run, everything W&B writes inside the run folder:
its run folders in RUN_DIR/wandb/ (`wandb sync RUN_DIR/wandb` uploads offline ones), and its
caches, staged artifacts and service logs in RUN_DIR/wandb/{cache,data,artifacts}/ (W&B's own
settings and login in ~/.config/wandb and ~/.netrc are read as usual, never written).

Run name: the run folder's name; config: the flat config; history: each epoch's row at
step=epoch (W&B's step is the epoch, so it only grows, across resumes too); summary at the end:
results.json's values; with `log_checkpoints`, checkpoints/best*.pt (last.pt in a run that keeps
no best one) as a model artifact. A sweep's jobs share the W&B group of their sweep folder.

An epoch is logged once its checkpoint is written, and a resumed run continues its W&B run (the
id is saved in the checkpoint) from the first epoch W&B lacks: online, W&B's server says where
the run is (`starting_step`); offline, the run's earlier W&B folders say (their transaction logs
are read: a process killed outright loses what its W&B service had not yet written). W&B then
holds every epoch once, the value the run continued from.
"""

import logging
import os
import struct
import zlib
from pathlib import Path

from cnntrain.core.checkpoint import BEST, LAST, checkpoint_file, checkpoint_path
from cnntrain.core.errors import UserError
from cnntrain.core.files import tree
from cnntrain.loggers.params import flat_config, sweep_folder
from cnntrain.loggers.rows import EpochRows, numbers

log = logging.getLogger("cnntrain")
FOLDER = "wandb"  # in the run folder
# Where W&B writes besides its run folders (environment variable → folder under FOLDER).
PLACES = {"WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data", "WANDB_ARTIFACT_DIR": "artifacts"}
# W&B's transaction log (run-<id>.wandb) is LevelDB's log format: 32 KiB blocks of records,
# each a header (CRC-32 of type and data, length, type) and a piece of a wandb.proto Record.
BLOCK, HEADER, MAGIC = 32768, 7, b":W&B"
WHOLE, FIRST, LAST_PIECE = 1, 2, 4  # the type of a record's piece (3: a middle one)


class WandbLogger(EpochRows):
    def __init__(self, project: str = "cnntrain", entity: str | None = None,
                 mode: str | None = None, tags=(), log_checkpoints: bool = False):  # fmt: skip
        self.project, self.entity, self.mode = project, entity, mode
        self.tags = [str(tag) for tag in tags or []]
        self.log_checkpoints = log_checkpoints
        self.run = None  # the W&B run, once started
        self.environment = None  # the variables W&B's places replaced, to put back at the end

    def on_fit_start(self, loop) -> None:
        import wandb  # imported only when tracking

        run_dir = loop.run_dir.resolve()
        self.environment = replace_environment(places(run_dir))
        resumed = self.run_id is not None
        try:
            self.run = wandb.init(
                project=self.project, entity=self.entity, mode=self.mode, tags=self.tags,
                id=self.run_id, resume="allow", dir=run_dir, name=run_dir.name,
                group=sweep_group(), settings=wandb.Settings(console="off", symlink=False),
            )  # fmt: skip
        except (wandb.Error, OSError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise UserError(
                f"logger=wandb cannot start a W&B run ({reason}); run `wandb login`, or use "
                "logger.wandb.mode=offline (`wandb sync` uploads it later) or logger=none"
            ) from e
        remove_links(run_dir / FOLDER)
        self.run_id = self.run.id
        self.run.config.update(flat_config(loop.cfg), allow_val_change=True)
        self.sent = self.epochs_held(run_dir) if resumed else 0
        log.info("wandb: %s run %s in %s", "continuing" if resumed else "started", self.run_id,
                 run_dir / FOLDER)  # fmt: skip
        self.send_rows(loop.state.rows)

    def epochs_held(self, run_dir: Path) -> int:
        """The last epoch the resumed W&B run holds: its server's word online; offline, that of
        its earlier folders' transaction logs."""
        if self.run.disabled:
            return 0
        if self.run.offline:
            logs = (run_dir / FOLDER).glob(f"*-{self.run_id}/run-{self.run_id}.wandb")
            return max((max(history_steps(path), default=0) for path in logs), default=0)
        return max(0, self.run.starting_step - 1)  # the step after the server's last

    def send_row(self, row: dict) -> None:
        self.run.log({"epoch": row["epoch"], **numbers(row)}, step=row["epoch"])

    def on_fit_end(self, loop, results: dict) -> None:
        import wandb

        self.send_rows(loop.state.rows)
        scalars = {k: v for k, v in results.items() if isinstance(v, str | int | float | bool)}
        self.run.summary.update(scalars)
        if self.log_checkpoints:
            artifact = wandb.Artifact(f"model-{self.run_id}", type="model")
            for path in logged_checkpoints(loop.run_dir):
                artifact.add_file(str(path), skip_cache=True, policy="immutable")  # no copies
            self.run.log_artifact(artifact)

    def on_close(self, loop, status: str) -> None:
        if self.environment is None:  # never started
            return
        import wandb

        try:
            if self.run is not None:
                if status == "interrupted":
                    self.run.mark_preempting()  # to be resumed
                self.run.finish(exit_code=0 if status == "finished" else 1)
            wandb.teardown()  # its service goes with this run's places (a sweep runs the next)
        finally:
            replace_environment(self.environment)
            remove_links(loop.run_dir / FOLDER)


def logged_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints `log_checkpoints` uploads: checkpoints/best*.pt, or the one the run was
    tested with where it keeps none (trainer.save_top_k=0: last.pt)."""
    best = sorted(checkpoint_path(run_dir, LAST).parent.glob("best*.pt"))
    return best or [checkpoint_file(run_dir, BEST, "run")]


def places(run_dir: Path) -> dict[str, str]:
    """W&B's environment variables naming where it writes: folders inside the run folder."""
    root = run_dir / FOLDER
    return {"WANDB_DIR": str(run_dir), **{k: str(root / v) for k, v in PLACES.items()}}


def remove_links(folder: Path) -> None:
    """W&B's links in `folder` (its service links logs/debug-core.log to its log in the cache,
    whatever `symlink` says): removed at once, so that the run folder holds none (cnntrain
    refuses to write into one that does: core.files.refuse_links)."""
    for path in tree(folder):
        if path.is_symlink():
            path.unlink()


def replace_environment(values: dict[str, str | None]) -> dict[str, str | None]:
    """Set (None: unset) environment variables; their values before."""
    before = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return before


def sweep_group() -> str | None:
    """A sweep job's W&B group: its sweep folder's date and time (`2026-12-05/06-38-02_x1y2`)."""
    sweep = sweep_folder()
    return "/".join(Path(sweep).parts[-2:]) if sweep else None


def history_steps(path: Path) -> list[int]:
    """The steps of the history rows in the W&B transaction log at `path`."""
    return [r.history.step.num for r in transaction_records(path) if r.HasField("history")]


def transaction_records(path: Path):
    """The wandb.proto Records of the transaction log at `path`, up to the first torn or corrupt
    piece (where a killed process stopped writing)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    if not data.startswith(MAGIC):
        return
    at, pieces = HEADER, b""  # the file's own header takes the first block's first 7 bytes
    while at + HEADER <= len(data):
        room = BLOCK - at % BLOCK
        if room < HEADER:  # a block's end too short for a header is padding
            at += room
            continue
        checksum, length, kind = struct.unpack("<IHB", data[at : at + HEADER])
        piece = data[at + HEADER : at + HEADER + length]
        if len(piece) < length or zlib.crc32(piece, zlib.crc32(bytes([kind]))) != checksum:
            return
        at += HEADER + length
        pieces = piece if kind in (WHOLE, FIRST) else pieces + piece
        if kind in (WHOLE, LAST_PIECE):
            record = Record()
            record.ParseFromString(pieces)
            yield record
