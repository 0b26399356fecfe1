"""Config texts shared by the config tests (test_config.py, test_audio_options.py)."""

# The smallest valid agent.toml: what a test adds a section or a key to.
MINIMAL = """
schema_version = 1
[site]
id = "site01"
[room]
id = "room101"
"""
