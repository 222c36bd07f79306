"""Distributed scoring: :mod:`.spark` scores a Spark DataFrame by key with the model the
service serves (``score_spark``).

May import the shared base and :mod:`keyed_serving.model`; never the serving or client parts.
"""
