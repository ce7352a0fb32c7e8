"""Studies: taste, the demo and the multi-seed soups study, each built from the same parts over the store."""
