"""The build: setuptools, as pyproject.toml declares, plus one step. Before the package's
modules are collected, the Open Inference Protocol's gRPC stubs are generated from its own
``.proto`` (keyed_serving/serving/proto/open_inference_grpc.proto) with grpcio-tools, a build
requirement: no protobuf code is written by hand or kept in git. This holds for a wheel, an
editable install (``make install``) and so for a bento built from the checkout."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO = Path("keyed_serving/serving/proto/open_inference_grpc.proto")


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"grpc_tools.protoc could not compile {PROTO}")


class BuildWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
