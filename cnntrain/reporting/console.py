"""The console that cnntrain prints tables on (stdout), beside its log lines (stderr)."""

from rich.console import Console

console = Console()
