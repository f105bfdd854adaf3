"""Data-selection methods (each a module: ``pds``, later ``mates``, ``less``, …)."""
