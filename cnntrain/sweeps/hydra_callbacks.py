"""Hydra callbacks (conf/hydra/default.yaml): what happens when a multirun ends."""

from pathlib import Path

from hydra.experimental.callback import Callback

from cnntrain.reporting.console import console
from cnntrain.reporting.report import write_sweep_report
from cnntrain.reporting.sweep_table import FINISHED, sweep_table, write_sweep_summary


class SweepSummary(Callback):
    """At the end of a multirun (after every job, in the launching process): summary.csv and
    report.html in the sweep folder, a table printed, and a non-zero exit if any job failed."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_sweep_summary(sweep_dir)
        console.print(sweep_table(rows))
        report = write_sweep_report(sweep_dir)
        console.print(f"summary: {sweep_dir / 'summary.csv'}; report: {report}")
        failed = [r["job"] for r in rows if r["status"] not in FINISHED]
        if failed:  # the sweep ran to the end, but its exit status must not hide failures
            raise SystemExit(
                f"cnntrain: {len(failed)} job(s) did not complete: {', '.join(failed)}"
            )
