"""The full evaluation eval.py runs: bounds, scores, baselines, probes, the report and its rendering, generation."""
