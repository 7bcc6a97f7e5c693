"""The project's own protobuf messages; ``make protos`` generates ``*_pb2.py`` from the ``.proto`` files."""
