"""The benchmarks (run as scripts: ``.venv/bin/python bench/NAME.py``) and their helpers.

A regular package, not a namespace one: ``bench.*`` always comes from the tree the script
is in, while ``mcplb`` may come from a PYTHONPATH entry such as build/compiled (see
``bench.common.pin_mcplb_import``).
"""
