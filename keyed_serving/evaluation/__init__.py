"""Evaluation, the read side of continuous evaluation (``keyed-evaluate``): captured
predictions joined with their labels by key, on DuckDB or Spark, under one set of rules;
quality per model version and window of time; a JSON and a self-contained HTML report.

May import the shared base and :mod:`keyed_serving.capture` (the layout it reads); never
the serving, client or offline parts.
"""
