"""What every layer uses: the exit-code contract and its exceptions (``errors``, ``contract``), checks of
values and names (``validate``), atomic file writes (``files``), settings declared once (``settings``)."""
