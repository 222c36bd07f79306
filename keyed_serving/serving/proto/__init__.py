"""The Open Inference Protocol's gRPC definition, ``open_inference_grpc.proto``, as the
protocol's repository has it (kserve/open-inference-protocol, specification/protocol,
commit d49cc23; Apache-2.0, its header kept). Its Python stubs,
``open_inference_grpc_pb2`` and ``open_inference_grpc_pb2_grpc``, are generated from it when
the package is built or installed (setup.py); they are not kept in git."""
