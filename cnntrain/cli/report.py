"""`cnntrain-report PATH`: (re)build report.html of a run or sweep folder."""

import sys
from pathlib import Path

from cnntrain.cli.common import fail
from cnntrain.core.errors import UserError
from cnntrain.core.files import refuse_links
from cnntrain.core.safe_text import printable
from cnntrain.reporting.console import console
from cnntrain.reporting.report import build_report, is_sweep_folder
from cnntrain.reporting.sweep_table import write_sweep_summary


def main() -> None:
    """`cnntrain-report PATH`: (re)build report.html of a run or sweep folder, finished or not."""
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        fail("usage: cnntrain-report PATH (a run folder, or a multirun sweep folder)")
    folder = Path(sys.argv[1])
    try:
        refuse_links(folder)  # a received run or sweep folder: no link out of it
        if is_sweep_folder(folder):
            write_sweep_summary(folder)
        console.print(f"report: {build_report(folder)}")
    except UserError as e:
        fail(str(e))
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # a received file's content
        fail(f"{folder}: a file there is not as cnntrain writes it ({type(e).__name__}: "
             f"{printable(e)}); rebuild the report from a run folder cnntrain wrote")  # fmt: skip


if __name__ == "__main__":
    main()
