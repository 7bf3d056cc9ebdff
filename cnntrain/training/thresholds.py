"""Per-label thresholds after the final test of a run with several labels per image: tuned on the
validation split (never the test split) with the tested weights, saved in the checkpoint the test
used, and read back by cnntrain-eval, -predict and -export."""

import logging
from dataclasses import asdict, dataclass

import torch

from cnntrain.core.checkpoint import BEST, LAST, add_entry
from cnntrain.core.safe_text import first_few, printable
from cnntrain.metrics import label_probabilities, tune_thresholds
from cnntrain.metrics.multilabel import DEFAULT_THRESHOLD
from cnntrain.metrics.results import test_results
from cnntrain.training.evaluate import evaluate

log = logging.getLogger("cnntrain")
ENTRY = "thresholds"  # the checkpoint's key
FEW_POSITIVES = 10  # a label's validation positives below which its tuned threshold is rough


@dataclass
class Thresholds:
    """Each label's probability threshold (a label is predicted when p ≥ it), and how it came."""

    values: list[float]  # (L,) in the labels' (logits') order
    rule: str | float  # trainer.thresholds: "f1", or one probability for every label
    fitted_on: str | None  # "val" when tuned on the validation split, else None
    images: int = 0  # validation images tuned on

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.values, dtype=torch.float64)

    def results(self, labels: list[str]) -> dict:
        """results.json's fields: `thresholds` {label: p}, `thresholds_rule`, `_fitted_on`."""
        return {
            "thresholds": dict(zip(labels, self.values, strict=True)),
            "thresholds_rule": self.rule,
            "thresholds_fitted_on": self.fitted_on,
        }


def fitted_test_results(out: dict, classes: list[str], fitted: "float | Thresholds | None",
                        split: str) -> dict:  # fmt: skip
    """results.json's test fields of a run's final test or cnntrain-eval's: with several labels
    per image at the labels' Thresholds `fitted` (thresholded_results), else with `fitted` the
    temperature fitted on the validation split (None: not fitted)."""
    if isinstance(fitted, Thresholds):
        return thresholded_results(out, classes, fitted, split)
    return test_results(out, classes, fitted)


def thresholded_results(out: dict, labels: list[str], thresholds: Thresholds,
                        split: str) -> dict:  # fmt: skip
    """results.json's test fields of a test with several labels per image (a run's final test,
    or cnntrain-eval's): the metrics at `thresholds` and how they came; labels without a positive
    image in `split` are named in a warning (their AP is null, left out of test/mAP)."""
    absent = [printable(c) for c, n in zip(labels, out["targets"].sum(0).tolist(), strict=True)
              if n == 0]  # fmt: skip
    if absent:
        log.warning("%d label(s) have no positive image in the %s split: %s; test/mAP is the mean "
                    "over the others", len(absent), split, first_few(absent, 5))  # fmt: skip
    metrics = test_results(out, labels, thresholds=thresholds.tensor())
    return {**metrics, **thresholds.results(labels)}


def fit_thresholds(loop, net) -> Thresholds | None:
    """The labels' thresholds of `net` (the tested weights) by `trainer.thresholds`, written into
    the tested checkpoint: "f1" tunes each on the validation split (with the test's arithmetic
    and test-time views); without a validation split of its own (data.val_split=0) every label
    keeps DEFAULT_THRESHOLD, said in one line.

    Every rank evaluates its shard (call it on all of them); rank 0 alone tunes and writes, and
    gets the thresholds (the other ranks None)."""
    data, rule = loop.data, loop.cfg.trainer.thresholds
    count = len(data.classes)
    if rule != "f1":
        found = Thresholds([float(rule)] * count, float(rule), None)
    elif data.val is data.test:
        if loop.is_main:
            log.info("data.val_split=0: no validation split to tune the labels' thresholds on; "
                     "each stays %g", DEFAULT_THRESHOLD)  # fmt: skip
        found = Thresholds([DEFAULT_THRESHOLD] * count, rule, None)
    else:
        found = tuned(loop, net)
    if loop.is_main and found is not None:
        path = loop.checkpoint_path(BEST if loop.keeps_best else LAST)
        add_entry(path, ENTRY, asdict(found), loop.tested_checkpoint)
    return found if loop.is_main else None


def tuned(loop, net) -> Thresholds | None:
    """Each label's threshold of best F1 on the validation split (rank 0; None on the others)."""
    data = loop.data
    out = evaluate(net, data.val, loop.parts.arithmetic, loop.show_bars, "thresholds",
                   keep_outputs=True)  # fmt: skip
    if not loop.is_main:
        return None
    targets = out["targets"]
    values = tune_thresholds(label_probabilities(out["logits"]), targets, "f1")  # float64
    rough = [printable(name) for name, n in zip(data.classes, targets.sum(0).tolist(), strict=True)
             if n < FEW_POSITIVES]  # fmt: skip
    if rough:
        log.warning("%d label(s) have fewer than %d positive %s images to tune a threshold on "
                    "(rough; a label with none keeps %g): %s", len(rough), FEW_POSITIVES,
                    data.val_name,
                    DEFAULT_THRESHOLD, first_few(rough, 5))  # fmt: skip
    log.info("each label's threshold tuned for its F1 on %d %s images (from %.3g to %.3g)",
             out["count"], data.val_name, values.min(), values.max())  # fmt: skip
    return Thresholds(values.tolist(), "f1", "val", out["count"])
