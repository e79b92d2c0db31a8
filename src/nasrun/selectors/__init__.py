"""Selectors: turn a search state into one or more genotypes (design.md §4)."""
