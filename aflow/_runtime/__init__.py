"""The runtime: the scheduler, run handles and the entry points that start runs."""
