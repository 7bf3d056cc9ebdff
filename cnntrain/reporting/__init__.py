"""What a run shows and leaves behind for people: the console, progress bars, metrics files, the
layer table, plots, report.html and the sweep table."""
