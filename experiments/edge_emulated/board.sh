#!/usr/bin/env bash
# An emulated Raspberry Pi board (64-bit, aarch64) beside two native SuperNodes.
#
#   sudo bash experiments/edge_emulated/board.sh            # setup (cached) + measure
#   sudo bash experiments/edge_emulated/board.sh setup      # host tools, arm64 userland, board install
#   sudo bash experiments/edge_emulated/board.sh measure    # run on an otherwise idle machine
#   sudo bash experiments/edge_emulated/board.sh clean      # remove the board's folder
#
# Debian's qemu-user-static runs aarch64 binaries through binfmt_misc; debootstrap makes a
# Debian bookworm arm64 userland (what Raspberry Pi OS 64-bit is built on, Python 3.11) in
# $BOARD. Inside it, fedconv's board install is made as docs/edge.md says (torch's aarch64
# CPU wheel from PyPI, then `pip install ./fedconv`: no Ray, Hydra, ...). `measure` records
# the install size, the client path's import time, one local epoch natively and emulated
# (their ratio: a rough board-speed factor), then runs a real SuperLink (TLS + SuperNode auth)
# on 127.0.0.1 with two native SuperNodes and the emulated board's SuperNode and warm worker,
# and `python -m fedconv.edge.deploy` for $ROUNDS rounds of digits. Results: $OUT/<time>/.
# Needs root (chroot, mounts). Re-runnable: finished setup steps are kept in $BOARD; every
# process and mount it starts is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BOARD=${BOARD:-/var/tmp/fedconv-board-arm64}
OUT=${OUT:-$HERE/results}
ROUNDS=${ROUNDS:-3}
PY=${PY:-$REPO/.venv/bin/python}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TORCH_BOARD=${TORCH_BOARD:-torch==2.9.1}   # PyPI's aarch64 2.9.1 is a CPU build (2.13.0 a CUDA build)
BOARD_VENV=/opt/fedconv-venv
STEP=${1:-all}

say() { echo "[board] $*"; }
need_root() { [ "$(id -u)" = 0 ] || { echo "error: run as root (chroot and mounts)" >&2; exit 2; }; }

# a command in the board's userland, with a clean environment
IN_BOARD=(chroot "$BOARD" /usr/bin/env -i HOME=/root PATH=$BOARD_VENV/bin:/usr/bin:/bin LANG=C.UTF-8
  PIP_CERT=/etc/ssl/certs/host-ca.crt SSL_CERT_FILE=/etc/ssl/certs/host-ca.crt PIP_CONFIG_FILE=/dev/null
  PIP_DISABLE_PIP_VERSION_CHECK=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
  FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.25})
in_board() { "${IN_BOARD[@]}" "$@"; }

MOUNTED=()
PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  sleep 2
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
  # anything still running from inside the board (e.g. a flwr-clientapp) holds its mounts
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$BOARD" ] && kill -KILL "${p#/proc/}" 2>/dev/null
  done
  for ((i=${#MOUNTED[@]}-1; i>=0; i--)); do umount -l "${MOUNTED[$i]}" 2>/dev/null; done
}
trap cleanup EXIT

mount_board() {
  for m in proc dev sys; do
    if ! mountpoint -q "$BOARD/$m"; then
      case $m in
        proc) mount -t proc proc "$BOARD/proc" ;;
        dev) mount --bind /dev "$BOARD/dev" ;;
        sys) mount -t sysfs sys "$BOARD/sys" ;;
      esac
      MOUNTED+=("$BOARD/$m")
    fi
  done
  cp /etc/resolv.conf "$BOARD/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$BOARD/etc/ssl/certs/host-ca.crt"
}

host_tools() {
  if ! command -v debootstrap >/dev/null || [ ! -e /usr/bin/qemu-aarch64-static ]; then
    say "installing qemu-user-static, debootstrap, binfmt-support"
    apt-get update -qq && apt-get install -y -qq qemu-user-static debootstrap binfmt-support >/dev/null
  fi
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
  grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
    echo "error: binfmt qemu-aarch64 lacks the F flag (the interpreter must be usable inside a chroot)" >&2; exit 1; }
}

userland() {
  if [ ! -f "$BOARD/.fedconv-userland" ]; then
    say "debootstrap bookworm arm64 -> $BOARD (several minutes: its second stage runs emulated)"
    rm -rf "$BOARD"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$BOARD" "$MIRROR" >/dev/null
    touch "$BOARD/.fedconv-userland"
  fi
  say "userland: $(in_board uname -m), $(in_board python3 --version)"
}

board_install() {
  # the repository as it is (committed or not), as docs/edge.md copies it to a board
  rm -rf "$BOARD/home/pi/fedconv" && mkdir -p "$BOARD/home/pi/fedconv"
  tar -C "$REPO" --exclude=./.venv --exclude=./results --exclude=./.git --exclude=./build --exclude='*.egg-info' \
    --exclude=./experiments --exclude='__pycache__' --exclude=./keys -cf - . | tar -C "$BOARD/home/pi/fedconv" -xf -
  if [ ! -f "$BOARD/.fedconv-torch" ]; then
    say "board: python3 -m venv $BOARD_VENV; pip install $TORCH_BOARD (emulated pip: slow)"
    rm -rf "$BOARD$BOARD_VENV"
    in_board python3 -m venv "$BOARD_VENV"
    in_board pip install -q --upgrade pip
    in_board pip install -q "$TORCH_BOARD"
    touch "$BOARD/.fedconv-torch"
  fi
  say "board: pip install ./fedconv (the lean board install)"
  in_board pip install -q --force-reinstall --no-deps /home/pi/fedconv
  in_board pip install -q /home/pi/fedconv
  in_board python -c "import torch, flwr, fedconv; print('[board] board install:', torch.__version__, flwr.__version__)"
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {  # start NAME CMD...: in its own session, log to $RES/NAME.log
  local name=$1; shift
  setsid "$@" >"$RES/$name.log" 2>&1 &
  PIDS+=($!)
}

wait_for() {  # wait_for FILE PATTERN SECONDS
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "error: '$2' not in $1 after $3 s" >&2; tail -20 "$1" >&2; exit 1; }
    sleep 0.5
  done
}

measure() {
  RES="$OUT/$(date -u +%Y-%m-%d_%H-%M-%S)"
  mkdir -p "$RES"
  local work="$RES/work" pi=/home/pi
  mkdir -p "$work"
  say "results -> $RES"

  # 1. install size and the client path's import time, on the board
  in_board python - >"$RES/install.json" <<'EOF'
import json, pathlib, site
sp = pathlib.Path(site.getsitepackages()[0])
size = lambda p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
mb = lambda b: round(b / 2**20, 1)
print(json.dumps({"site_packages_mb": mb(size(sp)), "torch_mb": mb(size(sp / "torch")),
                  "packages": sorted(p.name.split("-")[0] for p in sp.glob("*.dist-info"))}))
EOF
  for module in fedconv.federation.client_app fedconv.edge.board_app; do
    for _ in 1 2 3; do
      in_board python -c "import time; t=time.perf_counter(); import $module; print(round(time.perf_counter()-t, 3))"
    done >"$RES/import-$module.txt"
  done

  # 2. one local epoch, native and emulated, on the same data (digits partition 2 of 3)
  (cd "$REPO" && "$PY" -m fedconv.data.device_data "$work/devices" dataset=digits simulation.num_clients=3 >/dev/null)
  (cd "$REPO" && "$PY" -c "import json, sys; from fedconv.config import compose, to_run_config; \
    json.dump(to_run_config(compose(['dataset=digits', 'client.threads=1', 'simulation.num_clients=3'])), sys.stdout)") \
    >"$work/run_config.json"
  rm -rf "$BOARD$pi/fedconv-data" "$BOARD$pi/work" && mkdir -p "$BOARD$pi/work"
  cp -r "$work/devices/device-2" "$BOARD$pi/fedconv-data"
  cp "$work/run_config.json" "$HERE/one_message.py" "$BOARD$pi/work/"
  say "one local epoch natively"
  (cd "$REPO" && "$PY" "$HERE/one_message.py" "$work/run_config.json" "$work/devices/device-2") >"$RES/epoch-native.json"
  say "one local epoch on the emulated board"
  in_board python "$pi/work/one_message.py" "$pi/work/run_config.json" "$pi/fedconv-data" >"$RES/epoch-board.json"

  # 3. a deployment: SuperLink (TLS + auth) on loopback, two native SuperNodes, the board's
  (cd "$REPO" && "$PY" -m fedconv.edge.certs "$work/keys" --host 127.0.0.1 --supernodes 3 >/dev/null)
  mkdir -p "$BOARD$pi/keys" && cp "$work/keys/ca.crt" "$work/keys/supernodes/supernode-2" "$BOARD$pi/keys/"
  local port; port=$(free_port)
  local fed=("federation.address=127.0.0.1:$port" "federation.root_certificates=$work/keys/ca.crt"
             "federation.supernode_keys=$work/keys/supernodes" "federation.num_supernodes=3")
  local flwr_env=(env FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 PATH="$(dirname "$PY"):$PATH"
                  FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.25})
  start superlink "${flwr_env[@]}" FLWR_HOME="$work/superlink-home" flower-superlink \
    --ssl-ca-certfile "$work/keys/ca.crt" --ssl-certfile "$work/keys/superlink.crt" \
    --ssl-keyfile "$work/keys/superlink.key" --enable-supernode-auth --disable-runtime-dependency-installation \
    --host 127.0.0.1 --port "$port"
  sleep 3
  (cd "$REPO" && "$PY" -m fedconv.edge.deploy "${fed[@]}" mode=register "hydra.run.dir=$work/unused") >"$RES/register.log" 2>&1
  for i in 0 1; do
    start "worker-$i" "$PY" -m fedconv.edge.warm_worker --socket "$work/worker-$i/worker.sock"
    start "supernode-$i" "${flwr_env[@]}" FLWR_HOME="$work/supernode-$i-home" flower-supernode \
      --superlink "127.0.0.1:$port" --root-certificates "$work/keys/ca.crt" \
      --auth-supernode-private-key "$work/keys/supernodes/supernode-$i" --port "$(free_port)" \
      --node-config "partition-id=$i num-partitions=3 worker-socket=\"$work/worker-$i/worker.sock\""
  done
  say "board: warm worker and SuperNode (TLS + auth) starting, emulated"
  start worker-board "${IN_BOARD[@]}" python -m fedconv.edge.warm_worker --socket /run/fedconv/worker.sock
  start supernode-board "${IN_BOARD[@]}" flower-supernode --superlink "127.0.0.1:$port" \
    --root-certificates "$pi/keys/ca.crt" --auth-supernode-private-key "$pi/keys/supernode-2" --port "$(free_port)" \
    --node-config "partition-id=2 data-dir=\"$pi/fedconv-data\" state-dir=\"$pi/fedconv-state\" worker-socket=\"/run/fedconv/worker.sock\""
  wait_for "$RES/worker-board.log" "serving" 900
  say "deploy: $ROUNDS rounds of digits on 2 native SuperNodes + the emulated board"
  local t0=$SECONDS
  (cd "$REPO" && "$PY" -m fedconv.edge.deploy "${fed[@]}" dataset=digits "server.rounds=$ROUNDS" server.fraction_train=1.0 \
     client.threads=1 server.connect_timeout=900 server.round_timeout=1800 "hydra.run.dir=$RES/run") \
     >"$RES/deploy.log" 2>&1 || { tail -30 "$RES/deploy.log" >&2; exit 1; }
  echo "$((SECONDS - t0))" >"$RES/deploy-wall-seconds.txt"
  "$PY" "$HERE/summarize.py" "$RES" | tee "$RES/summary.md"
}

need_root
case $STEP in
  setup) host_tools; userland; mount_board; board_install ;;
  measure) host_tools; [ -f "$BOARD/.fedconv-torch" ] || { echo "error: run setup first" >&2; exit 2; }
           mount_board; board_install; measure ;;
  all) host_tools; userland; mount_board; board_install; measure ;;
  clean) rm -rf "$BOARD"; say "removed $BOARD" ;;
  *) echo "usage: board.sh [setup|measure|all|clean]" >&2; exit 2 ;;
esac
