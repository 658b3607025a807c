#!/usr/bin/env python3
"""The app of the real stack (scripts/real-stack.sh): a small http.server that
stores every visit as a row in postgres and counts visits in redis.

GET /         one visit: inserts a row (committed before answering), INCR hits
GET /ids      every stored visit id, in order
GET /hits     the redis counter
GET /healthz  200 when postgres and redis both answer, 503 otherwise

Postgres is reached through libpq's environment (PGHOST, PGUSER, PGPASSWORD,
PGDATABASE), redis through REDIS_HOST; both by service name, as in Compose.
"""
import json
import os
import signal
import socket
import sys
import threading
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import redis

REDIS = redis.Redis(
    host=os.environ.get("REDIS_HOST", "redis"),
    port=int(os.environ.get("REDIS_PORT", "6379")),
    socket_timeout=3,
    socket_connect_timeout=3,
)
SCHEMA = """CREATE TABLE IF NOT EXISTS visits (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    served_by text NOT NULL
)"""


SCHEMA_LOCK = threading.Lock()
schema_ready = False


def query(sql, args=()):
    """Runs one statement in its own connection and transaction (committed
    when this returns); returns all rows, if any. The table is created on
    first use, once: concurrent CREATE TABLE IF NOT EXISTS can fail."""
    global schema_ready
    with closing(psycopg2.connect(connect_timeout=3)) as conn:
        with SCHEMA_LOCK:
            if not schema_ready:
                with conn, conn.cursor() as cur:
                    cur.execute(SCHEMA)
                schema_ready = True
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []


class Handler(BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client (a probe, a timed-out curl) did not wait

    def do_GET(self):
        try:
            if self.path == "/healthz":
                REDIS.ping()
                query("SELECT 1")
                return self.reply(200, {"ok": True})
            if self.path == "/":
                (visit,) = query(
                    "INSERT INTO visits (served_by) VALUES (%s) RETURNING id",
                    (socket.gethostname(),),
                )[0]
                hits = REDIS.incr("hits")
                return self.reply(
                    200, {"visit": visit, "hits": hits, "served_by": socket.gethostname()}
                )
            if self.path == "/ids":
                ids = [r[0] for r in query("SELECT id FROM visits ORDER BY id")]
                return self.reply(200, {"ids": ids})
            if self.path == "/hits":
                return self.reply(200, {"hits": int(REDIS.get("hits") or 0)})
            return self.reply(404, {"error": "not found"})
        except Exception as e:  # a store is down: say so, keep serving
            error = f"{type(e).__name__}: {e}".strip()
            self.reply(503, {"error": error})
            print(f"{self.path}: {error}", flush=True)  # the last line says why

    def log_message(self, fmt, *args):
        print("%s %s" % (self.address_string(), fmt % args), flush=True)


def main():
    # PID 1 in its namespace: without a handler SIGTERM would be ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"app listening on :{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
