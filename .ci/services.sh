#!/usr/bin/env bash
# Makes sure the services the tests talk to are running on loopback: a NATS
# server with JetStream on 127.0.0.1:4222 and RabbitMQ (with streams) on
# 127.0.0.1:5672 and its STOMP plugin on 61613, and Redis on 127.0.0.1:6379
# (real TCP servers behind the TCP bridge tests). Uses them where they
# already run; otherwise installs them from Debian's packages (as root) and
# starts them. Also installs chromium and a VNC server (tigervnc) for the
# browser tests, nginx for the reverse-proxy test (not started: the tests
# run their own), nats-server for the fault-injection suite (which runs its
# own servers), python3-pika for the publishing examples, and node with npm
# (the TypeScript check of the client's declarations and the npm packages
# of the browser tests). Idempotent.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
	local port=$1 what=$2
	for _ in $(seq 1 120); do
		port_open "$port" && return 0
		sleep 1
	done
	echo "services: $what did not come up on port $port" >&2
	return 1
}

apt_updated=""
need_pkg() {
	if ! dpkg -s "$1" >/dev/null 2>&1; then
		if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
	fi
}

if ! port_open 4222; then
	echo "services: starting nats-server with JetStream on 127.0.0.1:4222"
	need_pkg nats-server
	mkdir -p /var/lib/nats-server
	start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
		-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
	wait_port 4222 nats-server
fi

if ! port_open 5672; then
	echo "services: starting rabbitmq-server on 127.0.0.1:5672"
	need_pkg rabbitmq-server
	rabbitmq-server -detached
	wait_port 5672 rabbitmq-server
fi

# RabbitMQ's STOMP plugin on 127.0.0.1:61613: a real STOMP broker behind the
# TCP bridge for @stomp/stompjs in the browser tests. Enabling it again is
# harmless; it is only asked for when the port is closed.
if ! port_open 61613; then
	echo "services: enabling RabbitMQ's STOMP plugin on port 61613"
	rabbitmq-plugins enable rabbitmq_stomp >/dev/null
	wait_port 61613 rabbitmq-stomp
fi

if ! port_open 6379; then
	echo "services: starting redis-server on 127.0.0.1:6379"
	need_pkg redis-server
	mkdir -p /var/lib/redis /var/log/redis
	redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
		--dir /var/lib/redis --logfile /var/log/redis/ci.log
	wait_port 6379 redis-server
fi

# The fault-injection suite (cmd/cometgate/faults_test.go) runs its own
# nats-server processes (one, or a cluster of three), whether or not the
# one on 4222 came from this package.
need_pkg nats-server

# The browser tests (cmd/cometgate/browser_test.go) drive Debian's chromium,
# headless; the fonts make its screenshots readable.
need_pkg chromium
need_pkg fonts-dejavu-core
# A VNC server for noVNC behind the TCP bridge: Xtigervnc is an X server
# and a VNC server in one process, started by the test itself (no Xvfb, no
# window manager).
need_pkg tigervnc-standalone-server
# The publishing examples (cmd/examples, TestPublishingExamples): Python's
# RabbitMQ client from Debian, for Debian's python3 (PyPI is not reachable).
need_pkg python3-pika

# node and npm: web/typescript_test.go installs TypeScript with npm into
# the ignored .ci/tmp, and the browser tests install client libraries
# with it. An image may ship node with its own npm rather than Debian's
# npm package, so only a missing command is installed.
command -v node >/dev/null 2>&1 || need_pkg nodejs
command -v npm >/dev/null 2>&1 || need_pkg npm

# The nginx example test (cmd/cometgate/deploy_test.go) runs nginx itself,
# as a child process on a free port; the package's own service must not
# start (it would take port 80). A policy-rc.d that says 101 keeps
# invoke-rc.d from starting it; one already there is left as it is.
if ! dpkg -s nginx >/dev/null 2>&1; then
	if [ -e /usr/sbin/policy-rc.d ]; then
		need_pkg nginx
	else
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
		need_pkg nginx
		rm -f /usr/sbin/policy-rc.d
		trap - EXIT
	fi
fi

echo "services: nats on 4222, rabbitmq on 5672 (stomp on 61613) and redis on 6379 are up; chromium, tigervnc, nginx, python3-pika, node and npm are installed"
