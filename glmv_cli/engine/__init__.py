"""Model backends: the Backend interface, the local transformers backend, constrained decoding."""
