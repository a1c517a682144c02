"""Write the pinned modal client's protobuf descriptors as a FileDescriptorSet.

The client package embeds its serialized descriptors; Ferry compiles its wire types
from them at build time so that no generated or copied protocol source is kept here.
Usage: python extract_fds.py OUT_PATH
"""
import sys

from google.protobuf import descriptor_pb2

try:
    import modal_proto.api_pb2 as api_pb2
    import modal_proto.task_command_router_pb2 as router_pb2
except ImportError as e:  # pragma: no cover - reported by build.rs
    sys.stderr.write(f"cannot import the modal client's descriptors: {e}\n")
    sys.exit(3)


def add(fd, out, seen):
    if fd.name in seen:
        return
    for dep in fd.dependencies:
        add(dep, out, seen)
    seen.add(fd.name)
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    out.file.append(proto)


def main():
    fds = descriptor_pb2.FileDescriptorSet()
    seen = set()
    for module in (api_pb2, router_pb2):
        add(module.DESCRIPTOR, fds, seen)
    with open(sys.argv[1], "wb") as f:
        f.write(fds.SerializeToString())
    import modal

    print(modal.__version__)


if __name__ == "__main__":
    main()
