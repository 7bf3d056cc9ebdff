"""Text from received files (class and file names) made safe to show: log lines and CSV cells."""

# A cell starting with one of these is a formula to a spreadsheet (OWASP's CSV injection page).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def first_few(names: list[str], count: int = 3, sep: str = ", ") -> str:
    """The first `count` of `names` joined by `sep`, with `…` after them when there are more:
    what a one-line message shows of a long list."""
    return sep.join(names[:count]) + (f"{sep}…" if len(names) > count else "")


def printable(name) -> str:
    """`name` on one line as it is, its unprintable characters (newline, tab, escape, bidi
    controls) escaped as Python writes them: `a\\nb` for a name holding a newline."""
    text = str(name)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def csv_cell(value):
    """`value` safe to open in a spreadsheet: text that starts like a formula gets a leading `'`;
    numbers, and text that reads as a number (`-0.5`), stay as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """The text csv_cell was given, from the cell it wrote: a `'` it put before a formula goes
    (text that itself began with `'=`… reads back without its `'`: the one ambiguity)."""
    if cell.startswith("'") and csv_cell(cell[1:]) == cell:
        return cell[1:]
    return cell


def csv_row(values) -> list:
    """csv_cell of each value of a row (a list), in order."""
    return [csv_cell(v) for v in values]
