"""One node at run time: the node and its parts, membership, relay, tasks, journals, long jobs."""
