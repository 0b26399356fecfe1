"""The unified audio source monitor: backends, the monitor thread and the level analyser."""
