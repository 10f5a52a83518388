"""Stockade's node sensor: BPF programs, their maps and the enforcement-mode probe."""
