"""The submission notebook's code cells as Python files, so that ruff checks them and the tests import them.

Each file is one cell: what follows its ``# --- cell ---`` line is the cell's code, exported verbatim
(``notebook.cell_source``). Above that line, imports for linting and for importing the file on its own:
what the notebook's earlier cells define comes from the earlier templates, or (for the cells the exporter
generates: the model, the recipe) from ``generated.py``'s typed names, under ``TYPE_CHECKING``.
"""
