"""Development kit: what tests, benchmarks and the demo need but a room box does not ship."""
