#!/usr/bin/env python3
"""Publish one JSON message to a cometgate channel through RabbitMQ (pika).

    python3 publish_amqp.py demo.prices '{"symbol": "ACME", "price": 12.5}'

A channel is a routing key on the gateway's topic exchange
(broker.amqp.exchange, "cometgate" by default, declared by the gateway).
The content type tells the gateway the payload is JSON; the message id makes
a retry safe (every gateway node delivers an id once per
broker.dedupe_window). Publisher confirms say the broker has the message.
Needs pika (Debian: python3-pika; PyPI: pika).
"""
import argparse
import time

import pika


def main():
    p = argparse.ArgumentParser()
    p.add_argument("channel")
    p.add_argument("data", help="JSON payload")
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    p.add_argument("--exchange", default="cometgate")
    p.add_argument("--id", default="example-%d" % time.time_ns())
    a = p.parse_args()

    conn = pika.BlockingConnection(pika.URLParameters(a.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()  # basic_publish now raises unless confirmed
        # mandatory: a message no gateway node is subscribed to comes back
        # as UnroutableError instead of vanishing.
        ch.basic_publish(
            exchange=a.exchange,
            routing_key=a.channel,
            body=a.data.encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                message_id=a.id,
                delivery_mode=2,
            ),
            mandatory=True,
        )
        print("published")
    finally:
        conn.close()


if __name__ == "__main__":
    main()
