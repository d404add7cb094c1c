"""Efficiency techniques as plain PyTorch: one reference and one variant per file, depending on torch only."""
