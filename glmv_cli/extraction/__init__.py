"""Schema resolution, prompts, constraint schemas, validation and the batch pipeline."""
