"""Bridges from other libraries to longattn's kernels. Each submodule imports its library lazily, on first use:
`longattn.integrations.transformers` (Hugging Face models: `register()` for the attention interface, `accelerate()`
for Longformer and Reformer)."""
