"""How a base is judged (method §8–§10): probes, discrepancies, collapse diagnostics, the
honest floor and the label-free estimators; one evaluation pass that reads them all."""
