"""What leaves the kit: the self-contained submission notebook (``notebook``)."""
