"""Speed and memory benchmarks against baselines measured in the same run (results in benchmarks/results/)."""
