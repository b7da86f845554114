#!/usr/bin/env bash
# Starts PostgreSQL, Redis and RabbitMQ on 127.0.0.1 when they are not already answering,
# and installs Chromium (for the report page test) when it is missing. Idempotent.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 1; done
  echo "service on port $1 did not start" >&2; return 1
}

if ! port_open 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  wait_port 5432
fi
if ! port_open 6379; then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  wait_port 6379
fi
if ! port_open 5672; then
  rabbitmq-server -detached || true
  wait_port 5672
fi
bash "$(dirname "$0")/install-chromium.sh"  # the report page and dashboard browser tests
exit 0
