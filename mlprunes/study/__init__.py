"""A study as a graph of jobs, the executors that run one, and the shipped study plans."""
