"""HumanEval pass@k: generation presets, sandboxed execution, the unbiased estimator."""
