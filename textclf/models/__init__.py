"""The model: backbone, pooling, head and loss (import the module you need: a config check imports pooling, heads and
losses for their signatures, and should not load the backbone with them)."""
