# Shared by the bench scripts (source it).

# write_section PREFIX TEXT: replaces the section of docs/BENCHMARKS.md whose
# heading starts with "## PREFIX" by TEXT, or appends TEXT; other sections
# are kept.
write_section() {
    touch docs/BENCHMARKS.md
    python3 - "$1" "$2" <<'PY'
import re, sys
p = 'docs/BENCHMARKS.md'
s = open(p).read()
if not s.startswith('# Benchmarks'):
    s = '# Benchmarks\n\n' + s
sec = sys.argv[2].rstrip() + '\n'
pat = re.compile(r'^## ' + re.escape(sys.argv[1]) + r'.*?(?=^## |\Z)', re.S | re.M)
s = pat.sub(lambda m: sec + '\n', s) if pat.search(s) else s.rstrip() + '\n\n' + sec
open(p, 'w').write(s)
PY
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_tcp() { for _ in $(seq 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# nbd_cluster NAME NODES COPIES SIZE_MIB [ENV=VALUE...]: starts sheep under
# $ROOT with binaries from $BIN (node 0 serves NBD; the ENV settings apply to
# every sheep, and so do the options in $SHEEP_ARGS, e.g. "-j size=256M"),
# formats, creates VDI "bench"; sets NBD_<NAME> to its URI and PORT_<NAME>
# to node 0's port; appends the pids to PIDS.
nbd_cluster() {
    local name=$1 n=$2 copies=$3 size=$4 port nbd i
    shift 4
    port=$(free_port); nbd=$(free_port)
    local ports=()
    for ((i = 0; i < n; i++)); do
        local p=$port; [ $i -gt 0 ] && p=$(free_port)
        ports+=("$p")
        local extra=(); [ $i = 0 ] && extra=(--nbd "127.0.0.1:$nbd")
        # shellcheck disable=SC2086
        env "$@" "$BIN/sheep" "$ROOT/$name$i" -f -c "local:$ROOT/shm.$name" -z $i -p "$p" "${extra[@]}" ${SHEEP_ARGS:-} \
            2>>"$ROOT/$name.log" >/dev/null &
        PIDS+=($!)
    done
    for p in "${ports[@]}"; do wait_tcp "$p"; done
    for _ in $(seq 400); do
        [ "$("$BIN/dog" node list -r -p "$port" 2>/dev/null | wc -l)" = "$n" ] && break; sleep 0.05
    done
    "$BIN/dog" cluster format -c "$copies" -p "$port" >/dev/null
    "$BIN/dog" vdi create bench "${size}M" -p "$port"
    wait_tcp "$nbd"
    printf -v "NBD_$name" '%s' "nbd://127.0.0.1:$nbd/bench"
    printf -v "PORT_$name" '%s' "$port"
}

# bench_setup NAME: builds the release binaries, sets BIN and ROOT (a fresh
# directory under /var/tmp) and PIDS, and at exit kills every pid in PIDS
# and removes ROOT.
bench_setup() {
    cargo build --release --bins >/dev/null
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
    ROOT=$(mktemp -d "/var/tmp/$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
}
bench_cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$ROOT"
}
