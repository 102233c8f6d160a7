"""Source datasets: readers for real releases (CAMUS) and the built-in CAMUS-format phantom."""
