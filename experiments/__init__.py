"""Experiments run from the repository root (``python -m experiments.<name>``); not part of
the installed ``divreward`` package."""
