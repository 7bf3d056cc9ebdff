"""`python -m cnntrain …` is the `cnntrain` command."""

from cnntrain.cli import main

main()
