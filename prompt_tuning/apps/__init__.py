"""The command faces: cli, sweep, launchers, export, demo, bench. Nothing in the package imports them."""
