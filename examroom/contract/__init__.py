"""The MQTT contract in code: what the room agent publishes and the site side reads.

Both sides import it, so a topic, a verdict or an event kind is spelled in one
place; ``docs/mqtt.md`` and the event pages document the same words, and a
test holds the two equal.
"""
