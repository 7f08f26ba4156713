"""Data for the standalone tool: labelled datasets, image reading, the on-disk feature store, synthetic animals."""
