"""The shared, torch-free serving layer: the model repository and its typed manifests, the
pipelines (one per method, both ends), the error table, security, logs, metrics and the process
runner. Device, server and link import it; it imports only the protocol."""
