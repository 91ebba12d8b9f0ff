"""Structured pruning: torch-pruning's dependency graph, the probe that finds what cannot be pruned, and the
prune + fine-tune stage."""
