"""Multi-stage recipes: sequences of ordinary engine runs."""
