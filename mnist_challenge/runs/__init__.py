"""What a run leaves behind and how it is judged: the run directory (``runlog``), one run from spec to
verdict (``experiment``), the rules and their checker (``checker``), the budgets (``budgets``) and the
results table (``report``)."""
