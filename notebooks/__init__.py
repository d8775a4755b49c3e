"""Notebook demo and its drawing helpers (``from notebooks import visualization``)."""
