"""The pieces of `tools/benchmark.py`: configurations, shared helpers, one module per
family of rows, and the report. Importing the row modules registers their rows in
`common.ROWS` in table order."""
