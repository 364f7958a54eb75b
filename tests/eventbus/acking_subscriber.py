"""A QoS 1 subscriber with a persistent session that acknowledges a message only once it is written.

`python acking_subscriber.py PORT TOPIC CLIENT_ID FILE` appends `<topic> <payload>` lines to FILE, as
`mosquitto_sub -v` does, and prints `subscribed` once its subscription is in place. mosquitto_sub's library
acknowledges a QoS 1 message before handing it over, so a subscriber stopped at the wrong moment loses one message
the broker will never send again: a gap the publisher did not make. Here the acknowledgement follows the write;
SIGTERM stops taking messages (those not written stay unacknowledged, and the broker sends them again to the next
connection of the session) and disconnects after the acknowledgements sent.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt


def main() -> int:
    port, topic, client_id, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    stopping = False
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                         manual_ack=True)

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        client.subscribe(topic, qos=1)

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        print("subscribed", flush=True)

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if stopping:
            return  # not acknowledged: the broker keeps it for the session
        os.write(out, message.topic.encode() + b" " + message.payload + b"\n")
        client.ack(message.mid, message.qos)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        client.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, stop)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_forever()
    os.close(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
