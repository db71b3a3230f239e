"""Data: synthetic generators for the memory tasks and loaders for real data sets."""
