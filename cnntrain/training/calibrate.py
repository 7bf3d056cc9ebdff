"""Temperature scaling after the final test: a temperature fitted on the validation split (never
the test split) with the tested weights, saved in the checkpoint the test used."""

import logging
from pathlib import Path

from cnntrain.core.checkpoint import BEST, LAST, add_entry
from cnntrain.metrics import fit_temperature, negative_log_likelihood
from cnntrain.training.evaluate import evaluate

log = logging.getLogger("cnntrain")
FEW_IMAGES = 100  # validation images below which a fitted temperature is said to be rough
NO_VALIDATION = ("data.val_split=0: no validation split to fit a temperature on; probabilities "
                 "stay uncalibrated")  # fmt: skip


def fit_on_validation(loop, net) -> float | None:
    """The temperature of `net` (the tested weights) fitted on the validation split, with the
    test's arithmetic and test-time views, written into the tested checkpoint; None when the run
    has no validation split of its own (data.val_split=0: it validated on the test split).

    Every rank evaluates its shard (call it on all of them); rank 0 alone fits and writes, and
    gets the temperature (the other ranks None)."""
    data = loop.data
    if data.val is data.test:
        if loop.is_main:
            log.info(NO_VALIDATION)
        return None
    out = evaluate(net, data.val, loop.parts.arithmetic, loop.show_bars, "calibrate",
                   keep_outputs=True)  # fmt: skip
    if not loop.is_main or out["count"] == 0:
        return None
    logits, targets = out["logits"], out["targets"]
    temperature = fit_temperature(logits, targets)
    path = loop.checkpoint_path(BEST if loop.keeps_best else LAST)
    save_temperature(path, temperature, out["count"], loop.tested_checkpoint)
    if out["count"] < FEW_IMAGES:
        log.warning("the temperature is fitted on only %d validation images: a rough estimate "
                    "(more with a larger data.val_split)", out["count"])  # fmt: skip
    log.info("temperature %.4g fitted on %d %s images (NLL %.4f → %.4f), saved in %s",
             temperature, out["count"], data.val_name, negative_log_likelihood(logits, targets),
             negative_log_likelihood(logits, targets, temperature), path)  # fmt: skip
    return temperature


def save_temperature(path: Path, temperature: float, images: int,
                     state: dict | None = None) -> None:  # fmt: skip
    """Add `calibration` ({temperature, fitted_on, images}) to the checkpoint at `path`
    (what cnntrain-eval, -predict and -export read back). `state`: that checkpoint as already
    loaded (the final test's), else it is read."""
    calibration = {"temperature": temperature, "fitted_on": "val", "images": images}
    add_entry(path, "calibration", calibration, state)
