"""Capture, the write side of continuous evaluation: every answered instance kept by key,
and the labels that arrive later, as Parquet datasets (:mod:`.layout` says where and with
which columns).

May import the shared base and :mod:`keyed_serving.model`; never the serving, client,
offline or evaluation parts, nor HTTP. The serving and offline parts write through it,
the evaluation part reads what it wrote.
"""
