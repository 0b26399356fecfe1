"""Prometheus metrics of one agent, on a private registry (tests run several agents in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connected = Gauge("examroom_broker_connected", "1 while connected to the broker", registry=r)
        self.reconnects = Counter("examroom_broker_reconnects_total", "Connections lost and retried", registry=r)
        self.connect_failures = Counter("examroom_broker_connect_failures_total",
                                        "Connection attempts that failed", registry=r)
        self.spooled = Counter("examroom_events_spooled_total", "Events committed to the spool",
                               ["kind"], registry=r)
        self.published = Counter("examroom_events_published_total", "Events handed to the broker",
                                 ["kind"], registry=r)
        self.dropped = Counter("examroom_events_dropped_total",
                               "Telemetry dropped because the spool was full", ["kind"], registry=r)
        self.unstored = Counter("examroom_events_unstored_total",
                                "Events that could not be stored: the spool's disk was full", ["kind"], registry=r)
        self.publish_rejected = Counter("examroom_events_rejected_total",
                                        "Events the broker refused (kept in the spool)", registry=r)
        self.spool_depth = Gauge("examroom_spool_events", "Events waiting in the spool", registry=r)
        self.spool_bytes = Gauge("examroom_spool_bytes", "Bytes waiting in the spool", registry=r)
        self.publish_latency = Histogram(
            "examroom_publish_latency_seconds", "From hand-off to the broker's PUBACK",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.callback_errors = Counter("examroom_callback_errors_total",
                                       "Exceptions caught in MQTT callbacks", registry=r)
        self.device_up = Gauge("examroom_device_up", "1 when the device is present and working",
                               ["device", "kind"], registry=r)
        self.status_ok = Gauge("examroom_device_status_success",
                               "1 when the device's status could be read", ["device"], registry=r)
        self.status_seconds = Gauge("examroom_device_status_duration_seconds",
                                    "How long reading the device's status took", ["device"], registry=r)
        self.selftest_ok = Gauge("examroom_selftest_success", "1 when the device's last self-test passed",
                                 ["device"], registry=r)
        self.selftest_seconds = Gauge("examroom_selftest_duration_seconds",
                                      "How long the device's last self-test took", ["device"], registry=r)
        self.garbage = Counter("examroom_reader_garbage_total", "Reader bytes refused as garbage",
                               ["device"], registry=r)
        self.audio_rms = Gauge("examroom_audio_rms_dbfs", "Broadcast feed RMS level", ["device"], registry=r)
        self.audio_peak = Gauge("examroom_audio_peak_dbfs", "Broadcast feed peak level", ["device"],
                                registry=r)
        self.clock_offset = Gauge("examroom_clock_offset_seconds", "Offset from the time source",
                                  ["device"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, listen: str):  # -> (server, thread)
        from prometheus_client import start_http_server

        host, _, port = listen.rpartition(":")
        return start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
