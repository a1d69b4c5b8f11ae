"""Benchmarks with a ground truth (Casper et al. 2023): predict (rediscover implanted trojans),
control (edit the model), replace (distil it), and the audit of a model someone brings."""
