#!/bin/sh
# The VM test tier's checks, run inside the guest by /init (scripts/vm/init.sh)
# on a pure cgroup v2 kernel: limits in the cgroup files, OOM kills reported,
# stats, the v2 device filter, kill -9 and cgroup.kill of the agent's unit with
# monitors and containers surviving and re-adopted, a rollout under a published
# port losing no request, and removal leaving no cgroup. Exits non-zero on any failure.
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export BERTH_AGENT=unix:/run/berth/berth.sock
CG=/sys/fs/cgroup
UNIT=$CG/system.slice/berthd.service
PARENT=$CG/berth
passed=0; failed=0
up() { cut -d' ' -f1 /proc/uptime; }

pass() { passed=$((passed + 1)); echo "vm-check PASS $1"; }
fail() { failed=$((failed + 1)); echo "vm-check FAIL $1"; }
# check NAME COMMAND...: passes when COMMAND succeeds.
check() { name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }
# wait_for SECONDS COMMAND...: polls every 0.2 s until COMMAND succeeds.
wait_for() {
  n=$(($1 * 5)); shift
  while [ "$n" -gt 0 ]; do "$@" && return 0; sleep 0.2; n=$((n - 1)); done
  return 1
}
ready() { curl -fsS -m 2 -o /dev/null http://127.0.0.1:9480/readyz 2>/dev/null; }
served() { curl -fsS -m 2 http://127.0.0.1:18080/ 2>/dev/null | grep -q "$1"; }
container_of() { berthctl status 2>/dev/null | awk -v s="$1" '$2 == s && $3 == "running" { print $1; exit }'; }
init_pid() { cat "$PARENT/$1/cgroup.procs" 2>/dev/null | head -n1; }
ppid_of() { awk '/^PPid:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
empty() { [ -z "$(cat "$1/cgroup.procs" 2>/dev/null)" ]; }
no_container_cgroups() { [ -z "$(find "$PARENT" -mindepth 1 -maxdepth 1 -type d 2>/dev/null)" ]; }

start_agent() {
  mkdir -p "$UNIT"
  # As systemd starts a unit: the process enters the unit's cgroup, then execs.
  sh -c "echo \$\$ > $UNIT/cgroup.procs; exec berthd --state-dir /var/lib/berth --run-dir /run/berth \
    --http 127.0.0.1:9480 --cgroup-parent berth --bridge berth0 --subnet 10.88.0.0/24 \
    --dns-upstream 127.0.0.1" >> /tmp/berthd.log 2>&1 &
  wait_for 30 ready
}

manifest() { # manifest FILE IMAGE_TAG [with-hog]
  cat > "$1" <<TOML
[service.web]
image    = "127.0.0.1:5000/berth/demo:$2"
replicas = 1
command  = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
[service.web.resources]
memory = "64Mi"
cpus   = 0.5
pids   = 64
[[service.web.ports]]
container = 8080
host      = 18080
[service.web.health]
http = { port = 8080, path = "/" }
interval = "500ms"
timeout = "1s"
retries = 3
TOML
  if [ "${3:-}" = with-hog ]; then cat >> "$1" <<TOML
[service.hog]
image    = "127.0.0.1:5000/berth/demo:1"
command  = ["/bin/sh", "-c", "echo hog up; sleep 1; tail /dev/zero"]
[service.hog.resources]
memory = "32Mi"
TOML
  fi
}

echo "== [$(up)s] registry (docker-registry on 127.0.0.1:5000)"
docker-registry serve /etc/berth-vm/registry.yml > /tmp/registry.log 2>&1 &
check registry-up wait_for 20 curl -fsS -m 2 -o /dev/null http://127.0.0.1:5000/v2/

echo "== [$(up)s] berthd in system.slice/berthd.service"
check agent-ready start_agent
manifest /tmp/v1.toml 1
check apply-v1 berthctl apply --wait --timeout 3m -f /tmp/v1.toml
berthctl status
WEB=$(container_of web)
echo "web container: $WEB"
check web-serves-v1 served v1

echo "== [$(up)s] user namespace (the default): root is an unprivileged host uid"
map=$(berthctl exec "$WEB" -- /bin/busybox cat /proc/self/uid_map 2>&1 | tr -s ' ' | sed 's/^ //')
echo "web uid_map: $map; web init runs as host uid $(awk '/^Uid:/ {print $2}' /proc/$(init_pid "$WEB")/status)"
check userns-mapped sh -c "echo '$map' | grep -Eq '^0 [1-9][0-9]* 65536$'"
check userns-host-uid [ "$(awk '/^Uid:/ {print $2}' /proc/$(init_pid "$WEB")/status)" != 0 ]

echo "== [$(up)s] limits read back from the cgroup v2 files"
check memory.max [ "$(cat "$PARENT/$WEB/memory.max")" = 67108864 ]
check cpu.max [ "$(cat "$PARENT/$WEB/cpu.max")" = "50000 100000" ]
check pids.max [ "$(cat "$PARENT/$WEB/pids.max")" = 64 ]
check swap-off [ "$(cat "$PARENT/$WEB/memory.swap.max" 2>/dev/null || echo 0)" = 0 ]

echo "== [$(up)s] devices (v2 BPF program)"
out=$(berthctl exec "$WEB" -- sh -c 'mknod /tmp/mem c 1 1 2>/dev/null && echo mknod=made || echo mknod=refused; echo x > /dev/null && echo null=ok' 2>&1)
echo "$out"
check mknod-refused sh -c "echo '$out' | grep -q mknod=refused"
check dev-null-usable sh -c "echo '$out' | grep -q null=ok"

echo "== [$(up)s] stats (berthctl top)"
berthctl exec "$WEB" -- sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done' >/dev/null 2>&1
top=$(berthctl top -o json 2>&1)
berthctl top 2>&1 | head -5
check top-shows-web sh -c "echo '$top' | grep -q '$WEB'"
check top-memory sh -c "echo '$top' | grep -Eq '\"memory_bytes\": ?[1-9]'"
check top-cpu sh -c "echo '$top' | grep -Eq '\"cpu_ns\": ?[1-9]'"

echo "== [$(up)s] the monitor lives in its own cgroup, outside the agent's unit"
PID=$(init_pid "$WEB"); MON=$(ppid_of "$PID")
echo "web init pid $PID, monitor pid $MON: $(cat /proc/$MON/cgroup)"
check monitor-own-cgroup [ "$(cat /proc/$MON/cgroup)" = "0::/berth/$WEB.monitor" ]

echo "== [$(up)s] kill -9 berthd, restart: re-adopted, not restarted"
AGENT=$(cat "$UNIT/cgroup.procs" | head -n1)
kill -9 "$AGENT"
check agent-gone wait_for 10 sh -c "! kill -0 $AGENT 2>/dev/null"
check agent-restarted start_agent
check same-container-after-kill9 wait_for 20 sh -c "[ \"\$(berthctl status 2>/dev/null | awk '\$2==\"web\" && \$3==\"running\"{print \$1}')\" = '$WEB' ]"
check same-pid-after-kill9 [ "$(init_pid "$WEB")" = "$PID" ]
check serves-after-kill9 served v1

echo "== [$(up)s] cgroup.kill of berthd.service (systemctl stop with KillMode=control-group)"
echo 1 > "$UNIT/cgroup.kill"
check unit-emptied wait_for 10 empty "$UNIT"
check monitor-survives kill -0 "$MON"
check container-survives kill -0 "$PID"
check serves-without-agent served v1
check agent-restarted-2 start_agent
check same-container-after-unit-kill wait_for 20 sh -c "[ \"\$(berthctl status 2>/dev/null | awk '\$2==\"web\" && \$3==\"running\"{print \$1}')\" = '$WEB' ]"
check same-pid-after-unit-kill [ "$(init_pid "$WEB")" = "$PID" ]
check monitor-still-holds-init [ "$(ppid_of "$PID")" = "$MON" ]

echo "== [$(up)s] rollout of a new digest under the published port, with a request loop"
rm -f /tmp/loop.stop /tmp/loop.out /tmp/loop.err
( i=0; bad=0
  while [ ! -e /tmp/loop.stop ] && [ $i -lt 5000 ]; do
    # A request that fails is logged with curl's exit code and message
    # (7: refused, 28: timed out, 52/56: empty reply/reset, 22: HTTP error).
    rc=0; curl -fsS -m 10 -o /dev/null http://127.0.0.1:18080/ 2>/tmp/loop.curl || rc=$?
    if [ "$rc" != 0 ]; then
      bad=$((bad + 1)); echo "request $i at $(up)s: curl exit $rc: $(cat /tmp/loop.curl)" >> /tmp/loop.err
    fi
    i=$((i + 1))
  done
  echo "$i $bad" > /tmp/loop.out ) &
LOOP=$!
manifest /tmp/v2.toml 2
check apply-v2 berthctl apply --wait --timeout 3m -f /tmp/v2.toml
sleep 1; touch /tmp/loop.stop; wait "$LOOP"
read total lost < /tmp/loop.out
echo "vm-figure rollout: $total requests during the rollout, $lost failed"
[ -s /tmp/loop.err ] && sed 's/^/vm-figure rollout failure: /' /tmp/loop.err
check rollout-requests-made [ "$total" -gt 0 ]
check rollout-lost-none [ "$lost" = 0 ]
check web-serves-v2 served v2
WEB2=$(container_of web)
check old-cgroup-removed wait_for 20 sh -c "[ ! -e $PARENT/$WEB ] && [ ! -e $PARENT/$WEB.monitor ]"

echo "== [$(up)s] OOM kill reported"
manifest /tmp/hog.toml 2 with-hog
berthctl apply -f /tmp/hog.toml >/dev/null
check oom-event wait_for 60 sh -c "berthctl events --kind container-oom-killed 2>/dev/null | grep -q hog"
echo "vm-figure oom: $(berthctl events --kind container-oom-killed 2>/dev/null | grep -c hog) container-oom-killed events for hog"
berthctl events --kind container-oom-killed 2>&1 | tail -3

echo "== [$(up)s] removal leaves no cgroup behind"
printf '# nothing\n' > /tmp/empty.toml
check apply-empty berthctl apply --prune --wait --timeout 2m -f /tmp/empty.toml
check no-cgroups-left wait_for 30 no_container_cgroups
ls "$PARENT"

echo "== [$(up)s] summary: $passed passed, $failed failed"
if [ "$failed" != 0 ]; then
  echo "--- berthd log (tail)"; tail -n 60 /tmp/berthd.log
  exit 1
fi
exit 0
