"""Evaluation: metrics, the evaluator with cached logits, the scorer recipes ask, BatchNorm steps, robustness."""
