"""MLServer peer for the benchmark: mlserver-sklearn's runtime, with keys.

The request is a V2 request decoded as a DataFrame (content type "pd"): a "key" BYTES
column and one FP64 column per feature. The key column is taken out before the model sees
the frame and returned as the "key" output beside "predict" and "predict_proba", so that
MLServer's adaptive batching (which merges requests along the first dimension and splits
the outputs back by position) is checked key by key, like ours. The model does the same
work as in our runner: one predict_proba, the forest's predict taken from it.
"""

from __future__ import annotations

import numpy as np
from mlserver.codecs import NumpyCodec, PandasCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver_sklearn import SKLearnModel


class KeyedSKLearnModel(SKLearnModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        frame = PandasCodec.decode_request(payload)
        keys = frame.pop("key").tolist()
        keys = [k.decode() if isinstance(k, bytes) else k for k in keys]
        proba = np.asarray(self._model.predict_proba(frame), dtype=np.float64)
        labels = self._model.classes_.take(proba.argmax(axis=1))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                StringCodec.encode_output("key", keys),
                StringCodec.encode_output("predict", [str(label) for label in labels]),
                NumpyCodec.encode_output("predict_proba", proba),
            ],
        )
