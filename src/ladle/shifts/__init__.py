"""Distribution shifts: corruption suites (ImageNet-C, LAION-C-style), seeded and cached."""
