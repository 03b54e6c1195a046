"""The edge server: the inference core with its batchers, the OIP gRPC and HTTP fronts
(``semlink server``)."""
