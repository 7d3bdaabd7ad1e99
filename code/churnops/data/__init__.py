"""Customer data: the column contract, streaming reads with validation, the
UCI data download and split, and the feature list."""
