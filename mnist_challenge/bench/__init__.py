"""Measurements of the engine: the suite against the course pipeline and an expert loop (``suite``), and
the reference loops it times (``reference``). ``python -m mnist_challenge.bench`` runs them."""
