"""The contract between the processes: the OIP gRPC service (proto and generated stubs), the
tensor codecs of gRPC and HTTP, and semlink's request parameters. Imports nothing of semlink."""
