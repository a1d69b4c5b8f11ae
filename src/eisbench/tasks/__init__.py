"""Benchmark tasks with a ground truth (Casper et al. 2023): predict (rediscover implanted
trojans), control (edit the model), replace (distil it into something simpler)."""
