"""Models, data pipeline, training loop and policy runner (docs/experiment.md, docs/eval.md)."""
