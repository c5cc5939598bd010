"""Training pipeline: corpus loading, tokenizer and model training, evaluation."""
