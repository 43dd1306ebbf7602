#!/usr/bin/env python3
"""Publish one JSON message through the gateway's HTTP API (standard library).

    python3 publish_http.py demo.prices '{"symbol": "ACME", "price": 12.5}'

For a backend that cannot reach the broker. The answer is 200 only once the
broker confirmed the message; the id makes a retry after a timeout safe.
An API key (api.keys in the gateway's configuration) goes in the
Authorization header; without one only loopback clients may publish, and
only when api.allow_loopback is true.
"""
import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def main():
    p = argparse.ArgumentParser()
    p.add_argument("channel")
    p.add_argument("data", help="JSON payload")
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--key", default="", help="API key")
    p.add_argument("--id", default="example-%d" % time.time_ns())
    a = p.parse_args()

    body = json.dumps({"channel": a.channel, "data": json.loads(a.data), "id": a.id}).encode()
    req = urllib.request.Request(a.url + "/api/publish", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    if a.key:
        req.add_header("Authorization", "Bearer " + a.key)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print("published", resp.read().decode())
    except urllib.error.HTTPError as e:
        # The gateway answers errors with a JSON body naming the problem.
        sys.exit("refused: %d %s" % (e.code, e.read().decode()))


if __name__ == "__main__":
    main()
