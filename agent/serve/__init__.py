"""What a node serves: its HTTP API, the Open Inference Protocol (HTTP and gRPC), the console, auth."""
