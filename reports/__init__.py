"""Reports read run directories only (bench.records); they never import torch, impls or suites."""
