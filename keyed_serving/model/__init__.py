"""The model: what it takes, predicting a micro-batch, and the stored models behind both.

- :mod:`.spec`: what a model takes and gives (``ModelSpec``) and the frame it is fed
  (``to_frame``), below both halves;
- :mod:`.predicting`: the fitted pipeline predicting keyed blocks, rows it raises on
  isolated, the forest path;
- :mod:`.store`: which version a server serves, finding, checking and loading a stored model;
- :mod:`.importing` (``keyed-import``, ``save_model``), with :mod:`.fitted_types` (what the
  fitted model says it takes) and :mod:`.import_check` (it predicts its sample as served);
- :mod:`.training` (``train.py``) and :mod:`.bento` (the packages a bento pins for its model).

Knows nothing of HTTP. May import the shared base only; never the serving, client or
offline parts.
"""
