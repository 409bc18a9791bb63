"""The operator's tools: the CLI, the local fleet, compose/stack/k8s, chaos, the checker, the simulator."""
