"""The request path inside the server, one module per stage. ``service.py`` conducts it:

1. :mod:`.v2` decodes an Open Inference Protocol (V2) body into the columnar body stage 2
   takes (:mod:`.grpc_v2` does the same for a gRPC ``ModelInfer``, through v2's rules);
2. :mod:`.validate`: wire instances -> keyed rows or per-key errors;
3. :mod:`.chunking`: keyed rows -> runner-sized blocks, each row still holding its key;
4. :mod:`.dispatch` carries blocks to the adaptive-batching runner and back (coalescing,
   retries, deadline); the runner predicts them with :mod:`keyed_serving.model.predicting`;
5. :mod:`.reassemble`: block results -> results in request order, checked key by key;
6. :mod:`.answers`: the checked results written as rows, columns or a V2 answer.

Around them: :mod:`.http` (the gate in front of the entry), :mod:`.compression`
(answers in gzip or deflate), :mod:`.routes` (what the entry answers before BentoML's
router), :mod:`.grpc_v2` (the protocol over gRPC, beside HTTP; its stubs in :mod:`.proto`,
generated at build time), :mod:`.openapi` (the API page), :mod:`.file_scoring`
(``/predict_file`` through the same stages), :mod:`.lifecycle` (start, drain, stop) and
:mod:`.metrics`.

May import the shared base (``keyed_serving.keys``, ``schemas``, ``settings``, ``tables``,
``formats``) and :mod:`keyed_serving.model`; never the client or offline parts. Only
``service.py`` imports it (and ``bench/unkeyed_service.py``, the benchmark's keyless copy
of it).
"""
