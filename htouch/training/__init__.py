"""Models, data pipeline, training loop and policy runner (see the training issue)."""
