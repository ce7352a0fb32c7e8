"""When is souping tasty? The statistics of a pairwise soup grid: gain, collapse, predictors, transitivity."""
