"""The room daemon: exam meaning of the hardware, durable spool, MQTT uplink, proctor CLI."""
