"""Results of many runs: aggregation over seeds, tables against published numbers, plots."""
