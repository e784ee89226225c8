"""glmv serve: an OpenAI-compatible chat-completions server over one local model, with batching."""
