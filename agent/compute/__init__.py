"""Models and their execution: tensors, the model store, fetching, checks, limits, the executor."""
