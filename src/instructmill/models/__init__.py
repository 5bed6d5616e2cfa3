"""Known models, embedded defaults and the model cache."""
