"""`cnntrain-report PATH`: (re)build report.html of a run or sweep folder."""

from pathlib import Path

from cnntrain.cli.common import ArgumentParser, fail
from cnntrain.core.errors import UserError
from cnntrain.core.files import refuse_links
from cnntrain.core.safe_text import printable
from cnntrain.reporting.console import console
from cnntrain.reporting.report import build_report, is_sweep_folder
from cnntrain.reporting.sweep_table import write_sweep_summary

DESCRIPTION = """(Re)build report.html of a cnntrain run folder (finished or not: results, curves,
plots, per-epoch and per-class tables, config) or of a multirun sweep folder (summary.csv and
the ranked jobs), from the files in it."""


def main() -> None:
    """`cnntrain-report PATH`: (re)build report.html of a run or sweep folder, finished or not."""
    parser = ArgumentParser(prog="cnntrain-report", description=DESCRIPTION)
    parser.add_argument("folder", type=Path, metavar="PATH", help="a run or sweep folder")
    folder = parser.parse_args().folder
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
