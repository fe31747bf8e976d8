# Source me on the lent GPU machine, from the repository root: `source scripts/h100/setup.sh`.
# That machine reaches no package registry: the nvtx wheel travels in .whl/ (bash ../shared/device/fetch-wheels.sh
# here, then carry ".whl" in the device call), and gpuprof is installed from this tree without the network.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || echo "setup: no .whl to install (nvtx missing: NVTX ranges become no-ops)"
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || { echo "setup: gpuprof did not install"; return 1 2>/dev/null || exit 1; }
OUT=${OUT:-$PWD/.out}
mkdir -p "$OUT"
SLUG=$(python3 -c "from gpuprof.device import info, gpu_slug; g = info(); print(gpu_slug(g.name) if g else 'no-gpu')")
G=traces/$SLUG
mkdir -p "$G"
gpuprof info | tee "$OUT/info.txt"

# step NAME SECONDS CMD...: run one step under a time limit, log it, carry on whatever it returns.
step() {
    local name=$1 limit=$2; shift 2
    echo "== $name: $*" | tee -a "$OUT/steps.log"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/steps.log"
    tail -n 25 "$OUT/$name.log"
}

# pack NAME: everything measured comes back as one archive (the device tool returns at most 8 files).
pack() {
    tar czf "$OUT/$1.tgz" traces tests/data "$HOME/.cache/gpuprof" 2>/dev/null
    ls -la "$OUT"
}
