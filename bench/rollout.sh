#!/usr/bin/env bash
# Rollout benchmark (root): time from applying a new image digest (already
# pulled) until the new replica is healthy and the old one is gone — Berth
# beside `docker-compose up -d` (Compose v1 1.29, apt `docker-compose`) making
# the same change on a private dockerd. Medians of RUNS alternating v1/v2
# changes each; writes bench/RESULTS-rollout.md (rollout section).
#
#   CARGO_TARGET_DIR=/work/target-rollout bash bench/rollout.sh   [RUNS=10]
#
# Berth: 1 replica, busybox httpd, http health check every 100ms,
# update.drain = "0s", default strategy (start-first), bridge networking.
# Timed: `berthctl apply` of the manifest with the other digest → GET
# /v1/containers (unix socket, every 20 ms) shows exactly one container, not
# the old one, running and healthy. Also timed: the same with strategy =
# "stop-first" (what compose does).
# Compose: same images (pulled from the same registry), network_mode: none,
# a docker healthcheck every 100ms. Timed: `docker-compose up -d` with the
# other digest until it returns (compose stops the old container, creates and
# starts the new one, removes the old), and until `docker inspect` reports the
# new container healthy (polled every 20 ms).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "rollout.sh: run as root" >&2; exit 1; }
RUNS=${RUNS:-10}
TAG=ro
source bench/rollout-lib.sh
install_peer_and_build
WORK=$(mktemp -d /tmp/berth-rollout.XXXXXX)
DOCKER_SOCK=/run/berth-rollout-docker.sock
DOCKER_CG="berth-rollout-docker-$$"

cleanup() {
  set +e
  stop_berthd 60
  stop_compose_dockerd berthrollout 2
  stop_registry
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== registry, images v1/v2"
start_registry
D1=$(build_image bench/web:v1 "rollout v1")
D2=$(build_image bench/web:v2 "rollout v2")
IMG="$REG/bench/web"
echo "v1 $D1"; echo "v2 $D2"

# Same command for both: busybox httpd as a child of a shell that exits on
# SIGTERM (busybox httpd as PID 1 would ignore it and wait for the kill timeout).
CMD_TOML='["/bin/busybox", "sh", "-c", "trap \"exit 0\" TERM; /bin/busybox httpd -f -p 8080 -h /www & wait"]'

berth_manifest() { # digest strategy
  cat > "$WORK/web.toml" <<TOML
[service.web]
image    = "$IMG@$1"
replicas = 1
command  = $CMD_TOML

[service.web.health]
http = { port = 8080, path = "/" }
interval = "100ms"
timeout = "500ms"
retries = 3

[service.web.update]
strategy = "$2"
drain = "0s"
TOML
}

# Prints the only container's id if there is exactly one and it is running and healthy.
one_healthy() {
  local j; j=$(containers_json 2>/dev/null) || return 1
  [ "$(grep -o '"id":"[^"]*"' <<<"$j" | wc -l)" = 1 ] || return 1
  grep -q '"state":"running"' <<<"$j" && grep -q '"health":"healthy"' <<<"$j" || return 1
  grep -o '"id":"[^"]*"' <<<"$j" | cut -d'"' -f4
}

wait_one_healthy_not() { # old_id timeout_s → prints new id
  local deadline=$(( $(date +%s) + $2 )) id
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if id=$(one_healthy) && [ "$id" != "$1" ]; then echo "$id"; return 0; fi
    sleep 0.02
  done
  echo "timed out waiting for one healthy container other than $1: $(containers_json)" >&2
  return 1
}

echo "== berthd (release $BIN/berthd)"
start_berthd
"$BIN/berthctl" pull "$IMG@$D1" >/dev/null
"$BIN/berthctl" pull "$IMG@$D2" >/dev/null

berth_runs() { # strategy → ms per run on stdout
  local strategy=$1 cur=$D1 next old new t0 t1
  berth_manifest "$D1" "$strategy"
  "$BIN/berthctl" apply --wait --timeout 2m -f "$WORK/web.toml" >/dev/null
  old=$(wait_one_healthy_not none 60)
  for i in $(seq "$RUNS"); do
    if [ "$cur" = "$D1" ]; then next=$D2; else next=$D1; fi
    berth_manifest "$next" "$strategy"
    t0=$(now_ns)
    "$BIN/berthctl" apply -f "$WORK/web.toml" >/dev/null
    new=$(wait_one_healthy_not "$old" 60)
    t1=$(now_ns)
    echo $(( (t1 - t0) / 1000000 ))
    echo "  berth $strategy run $i: $(( (t1 - t0) / 1000000 )) ms ($old → $new)" >&2
    old=$new; cur=$next
  done
}

# Where a rollout's time goes, from the agent's own events (medians over the
# block's rollouts), each from the revision-applied event: new container
# started, new container healthy, old container removed.
breakdown() { # first_seq → "a b c" ms
  curl -fsS --unix-socket "$SOCK" http://berth/v1/events | python3 -c '
import sys, json, statistics
from datetime import datetime
first = int(sys.argv[1])
ev = json.load(sys.stdin)
ev = ev.get("events", ev) if isinstance(ev, dict) else ev
ev = [e for e in ev if e["seq"] > first]
def t(e):
    s = e["time"].replace("Z", "+00:00")
    if "." in s:
        head, rest = s.split(".", 1)
        frac, tz = rest[:rest.index("+")], rest[rest.index("+"):]
        s = head + "." + (frac + "000000")[:6] + tz
    return datetime.fromisoformat(s).timestamp() * 1000
a, b, c = [], [], []
for i, e in enumerate(ev):
    if e["kind"] != "revision-applied":
        continue
    rest = ev[i + 1:]
    st = next((x for x in rest if x["kind"] == "container-started"), None)
    if not st: continue
    h = next((x for x in rest if x["kind"] == "health" and x.get("container") == st.get("container") and "healthy" in x["message"] and "unhealthy" not in x["message"]), None)
    rm = next((x for x in rest if x["kind"] == "container-removed" and x.get("container") != st.get("container")), None)
    if not h or not rm: continue
    a.append(t(st) - t(e)); b.append(t(h) - t(e)); c.append(t(rm) - t(e))
m = lambda v: "%.0f" % statistics.median(v) if v else "?"
print(m(a), m(b), m(c))' "$1"
}
last_seq() { curl -fsS --unix-socket "$SOCK" http://berth/v1/events | python3 -c '
import sys, json
ev = json.load(sys.stdin); ev = ev.get("events", ev) if isinstance(ev, dict) else ev
print(max([e["seq"] for e in ev] or [0]))'; }

echo "== Berth: $RUNS rollouts, start-first"
SEQ0=$(last_seq)
berth_runs start-first > "$WORK/berth-start-first.ms"
read -r BA_START BA_HEALTH BA_REMOVE < <(breakdown "$SEQ0")
echo "== Berth: $RUNS rollouts, stop-first"
SEQ0=$(last_seq)
berth_runs stop-first > "$WORK/berth-stop-first.ms"
read -r BS_START BS_HEALTH BS_REMOVE < <(breakdown "$SEQ0")
BERTH_METRIC=$(curl -fsS "127.0.0.1:$HTTP_PORT/metrics" | grep -E '^berth_rollout_duration_seconds_(sum|count)' | tr '\n' ' ')
stop_berthd 60

echo "== dockerd + docker-compose"
start_compose_dockerd --insecure-registry "$REG"

compose_file() { # digest
  cat > "$WORK/compose.yml" <<YML
version: "2.4"
services:
  web:
    image: $IMG@$1
    command: ["/bin/busybox", "sh", "-c", "trap \"exit 0\" TERM; /bin/busybox httpd -f -p 8080 -h /www & wait"]
    network_mode: none
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 100ms
      timeout: 500ms
      retries: 3
YML
}
DC=(docker-compose -p berthrollout -f "$WORK/compose.yml")

compose_ids() { docker ps -aq --filter label=com.docker.compose.project=berthrollout; }

if [ -z "$COMPOSE_NOTE" ]; then
  docker pull -q "$IMG@$D1" >/dev/null
  docker pull -q "$IMG@$D2" >/dev/null
  compose_file "$D1"
  "${DC[@]}" up -d >/dev/null 2>"$WORK/compose.err" || COMPOSE_NOTE="docker-compose up failed: $(tail -5 "$WORK/compose.err")"
fi
if [ -z "$COMPOSE_NOTE" ]; then
  cur=$D1
  old=$(compose_ids)
  : > "$WORK/compose-up.ms"; : > "$WORK/compose-healthy.ms"
  for i in $(seq "$RUNS"); do
    if [ "$cur" = "$D1" ]; then next=$D2; else next=$D1; fi
    compose_file "$next"
    t0=$(now_ns)
    "${DC[@]}" up -d >/dev/null 2>>"$WORK/compose.err"
    t1=$(now_ns)
    new=$(compose_ids)
    [ "$(wc -w <<<"$new")" = 1 ] && [ "$new" != "$old" ] || { echo "compose: expected one new container, got '$new' (old $old)" >&2; exit 1; }
    deadline=$(( $(date +%s) + 60 ))
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$new")" = healthy ]; do
      [ "$(date +%s)" -lt "$deadline" ] || { echo "compose: $new not healthy in 60s" >&2; exit 1; }
      sleep 0.02
    done
    t2=$(now_ns)
    echo $(( (t1 - t0) / 1000000 )) >> "$WORK/compose-up.ms"
    echo $(( (t2 - t0) / 1000000 )) >> "$WORK/compose-healthy.ms"
    echo "  compose run $i: up -d $(( (t1 - t0) / 1000000 )) ms, healthy $(( (t2 - t0) / 1000000 )) ms" >&2
    old=$new; cur=$next
  done
  "${DC[@]}" down -t 2 >/dev/null 2>&1
fi

read -r B_MED B_MIN B_P90 B_MAX < <(stats < "$WORK/berth-start-first.ms")
read -r S_MED S_MIN S_P90 S_MAX < <(stats < "$WORK/berth-stop-first.ms")
TABLE="| rollout, 1 replica, image already pulled ($RUNS runs) | median ms | min | p90 | max |
|---|---:|---:|---:|---:|
| Berth start-first: apply → new healthy, old removed | $B_MED | $B_MIN | $B_P90 | $B_MAX |
| Berth stop-first: apply → new healthy, old removed | $S_MED | $S_MIN | $S_P90 | $S_MAX |"
if [ -z "$COMPOSE_NOTE" ]; then
  read -r C_MED C_MIN C_P90 C_MAX < <(stats < "$WORK/compose-up.ms")
  read -r H_MED H_MIN H_P90 H_MAX < <(stats < "$WORK/compose-healthy.ms")
  ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
  TABLE="$TABLE
| compose v1 \`up -d\` returns (new running, old removed) | $C_MED | $C_MIN | $C_P90 | $C_MAX |
| compose v1 \`up -d\` → new healthy (docker healthcheck 100ms) | $H_MED | $H_MIN | $H_P90 | $H_MAX |
| **ratio Berth start-first / compose → healthy** | **$(ratio "$B_MED" "$H_MED")** | | | |
| ratio Berth stop-first / compose → healthy | $(ratio "$S_MED" "$H_MED") | | | |
| ratio Berth start-first / compose \`up -d\` returns | $(ratio "$B_MED" "$C_MED") | | | |"
else
  TABLE="$TABLE

Compose peer not measured: $COMPOSE_NOTE"
fi
echo
echo "$TABLE"
echo
echo "berth metrics after the runs: $BERTH_METRIC"

SECTION="## Rollout: apply of a new digest → new replica healthy, old one gone

\`bash bench/rollout.sh\` (RUNS=$RUNS) on $(date -u +%Y-%m-%d) — $(nproc) cores, $(uname -r),
berthd release build $(git rev-parse --short HEAD), $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /') on dockerd $(dockerd --version | awk '{print $3}' | tr -d ,),
all in the same run on the same (noisy) machine.

$TABLE

Berth polls \`GET /v1/containers\` over the unix socket every 20 ms (plus a curl
spawn each time, so ~±15 ms resolution); compose's \"healthy\" is polled with
\`docker inspect\` every 20 ms (a CLI spawn each, ~±30 ms). Berth runs each
replica on a bridge with its own netns+veth; the compose service has
\`network_mode: none\`, so the peer does strictly less networking work.
Berth's own \`berth_rollout_duration_seconds\` after the runs: \`$BERTH_METRIC\`

Where Berth's time goes: medians in ms from the agent's \`revision-applied\`
event (so without the \`berthctl apply\` round trip and the polling), from
\`GET /v1/events\`:

| Berth, from revision-applied | new started | new healthy | old removed |
|---|---:|---:|---:|
| start-first | $BA_START | $BA_HEALTH | $BA_REMOVE |
| stop-first | $BS_START | $BS_HEALTH | $BS_REMOVE |
"
python3 - "$SECTION" <<'PY'
import sys, re, os
path = "bench/RESULTS-rollout.md"
sec = sys.argv[1]
head = "# Rollout and reconcile benchmarks\n\n"
text = open(path).read() if os.path.exists(path) else head
m = re.search(r"^## Rollout:.*?(?=^## |\Z)", text, flags=re.S | re.M)
text = text[:m.start()] + sec + "\n" + text[m.end():] if m else text.rstrip("\n") + "\n\n" + sec
open(path, "w").write(text)
PY
echo "wrote bench/RESULTS-rollout.md"
