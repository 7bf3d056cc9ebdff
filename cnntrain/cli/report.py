"""`cnntrain-report PATH`: (re)build report.html of a run or sweep folder."""

import sys
from pathlib import Path

from cnntrain.cli.common import fail
from cnntrain.core.errors import UserError
from cnntrain.core.files import refuse_links
from cnntrain.reporting.console import console
from cnntrain.reporting.report import build_report, is_sweep_folder
from cnntrain.reporting.sweep_table import write_sweep_summary


def main() -> None:
    """`cnntrain-report PATH`: (re)build report.html of a run or sweep folder, finished or not."""
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        fail("usage: cnntrain-report PATH (a run folder, or a multirun sweep folder)")
    try:
        refuse_links(Path(sys.argv[1]))  # a received run or sweep folder: no link out of it
        if is_sweep_folder(Path(sys.argv[1])):
            write_sweep_summary(Path(sys.argv[1]))
        console.print(f"report: {build_report(Path(sys.argv[1]))}")
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
