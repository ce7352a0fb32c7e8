"""Souping: the mixing maths, the streaming mix, the recipe registry (one file per recipe), cook and check."""
