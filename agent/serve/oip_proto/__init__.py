"""The Open Inference Protocol's gRPC messages, from a vendored descriptor set.

``oip_service.proto`` is the source; ``oip_service.binpb`` is protoc's
``--descriptor_set_out`` of it (``make protos`` regenerates it with
grpcio-tools, a build-time tool agents do not need).  Why a descriptor set
and not generated ``_pb2`` modules:

- generated modules pin the protobuf runtime to the generator's version
  (protobuf 7's protoc output refuses the 6.x runtime libp2p requires), while
  a descriptor set is plain data every protobuf 4–7 runtime reads;
- they register ``inference.*`` in protobuf's default pool, where
  tritonclient registers the same names: a process using both (a test, a
  user's client next to our SDK) would fail with "duplicate symbol".  Here the
  messages live in a private pool.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_SET = descriptor_pb2.FileDescriptorSet.FromString((Path(__file__).parent / "oip_service.binpb").read_bytes())
POOL = descriptor_pool.DescriptorPool()
for _file in _SET.file:
    POOL.Add(_file)

SERVICE = POOL.FindServiceByName("inference.GRPCInferenceService")


def message(name: str):
    """The message class ``inference.<name>`` (nested names with dots)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


# method name -> (request class, response class), for every method the service declares
METHODS = {m.name: (message_factory.GetMessageClass(m.input_type), message_factory.GetMessageClass(m.output_type))
           for m in SERVICE.methods}
STREAMING = {m.name for m in SERVICE.methods if m.client_streaming or m.server_streaming}
