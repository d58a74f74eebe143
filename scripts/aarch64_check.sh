#!/usr/bin/env bash
# Runs Saguaro's tests on aarch64 under qemu-user emulation, in a Debian arm64 chroot, from an
# x86-64 machine with no ARM one at hand. It checks that the kernels build and compute the right
# values there; speed under emulation means nothing. Needs root, Debian's and PyPI's registries,
# and about 6 GB of disk (PyPI's aarch64 torch is a CUDA build). Not run by CI.
#
#   scripts/aarch64_check.sh                      # tests/quant
#   scripts/aarch64_check.sh tests/strategies -x  # any pytest arguments
#
# The chroot ($SAGUARO_ARM64_ROOT, default /opt/saguaro-arm64) and its venv are made once and kept.
# The emulated CPU is a Neoverse-N1 (NEON with the dot product): qemu-user shows programs the
# host's /proc/cpuinfo and /sys, which torch's CPU probes and GCC's -march=native cannot read on
# aarch64, so the chroot gets a Neoverse-N1's instead.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${SAGUARO_ARM64_ROOT:-/opt/saguaro-arm64}
[ "$(id -u)" = 0 ] || { echo "aarch64_check.sh: needs root (chroot, mounts, binfmt)" >&2; exit 2; }
[ $# -gt 0 ] || set -- tests/quant

command -v debootstrap >/dev/null && [ -e /usr/lib/binfmt.d/qemu-aarch64.conf ] ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap >/dev/null
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
# F: the kernel opens the interpreter now, so it works inside the chroot too.
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register

if [ ! -x "$root/usr/bin/python3" ]; then
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-dev,g++,ca-certificates bookworm "$root" http://deb.debian.org/debian
fi
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"  # a proxy's CA, if any

# A Neoverse-N1's /proc/cpuinfo and /sys/devices/system/cpu, two cores.
features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
for c in 0 1; do
    printf 'processor\t: %s\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$c" "$features"
done > "$root/root/cpuinfo"
sys=$root/root/sys/devices/system/cpu
kinds=(Data Instruction Unified); sizes=(64K 64K 1024K)  # cache index 0-2: L1d, L1i, L2
for c in 0 1; do
    mkdir -p "$sys/cpu$c/regs/identification" "$sys/cpu$c/topology" "$sys/cpu$c/cpufreq"
    echo 0x00000000413fd0c1 > "$sys/cpu$c/regs/identification/midr_el1"
    echo 0 > "$sys/cpu$c/regs/identification/revidr_el1"
    for f in core_id thread_siblings_list core_siblings_list core_cpus_list; do echo "$c" > "$sys/cpu$c/topology/$f"; done
    echo 0 > "$sys/cpu$c/topology/physical_package_id"
    echo 0-1 > "$sys/cpu$c/topology/package_cpus_list"
    echo 3000000 > "$sys/cpu$c/cpufreq/cpuinfo_max_freq"
    echo 1000000 > "$sys/cpu$c/cpufreq/cpuinfo_min_freq"
    for i in 0 1 2; do
        mkdir -p "$sys/cpu$c/cache/index$i"
        echo $((i < 2 ? 1 : 2)) > "$sys/cpu$c/cache/index$i/level"
        echo "${kinds[$i]}" > "$sys/cpu$c/cache/index$i/type"
        echo "${sizes[$i]}" > "$sys/cpu$c/cache/index$i/size"
        if [ "$i" = 2 ]; then echo 0-1; else echo "$c"; fi > "$sys/cpu$c/cache/index$i/shared_cpu_list"
    done
done
for f in online possible present; do echo 0-1 > "$sys/$f"; done

mounts=()
cleanup() { for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" || true; done; }
trap cleanup EXIT
bind() { [ -e "$2" ] || mkdir -p "$2"; mount --bind "${@:3}" "$1" "$2"; mounts+=("$2"); }
bind /proc "$root/proc"
bind "$root/root/cpuinfo" "$root/proc/cpuinfo"
bind /dev "$root/dev"
bind "$root/root/sys" "$root/sys"
gguf=${SAGUARO_CACHE:-$HOME/.cache/saguaro}/gguf  # the bundled models, if this machine assembled them
[ -d "$gguf" ] && bind "$gguf" "$root/root/.cache/saguaro/gguf" -o ro

# The working tree's tracked and new files, fresh each run.
rm -rf "$root/root/saguaro" && mkdir -p "$root/root/saguaro"
(cd "$repo" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$root/root/saguaro"

run() { chroot "$root" /usr/bin/env HOME=/root QEMU_CPU=neoverse-n1 PATH=/root/venv/bin:/usr/bin:/bin "$@"; }
if [ ! -x "$root/root/venv/bin/python" ]; then
    run python3 -m venv /root/venv
    run python -m pip install -q torch==2.13.0
    run python -m pip install -q numpy gguf tokenizers safetensors jinja2 tqdm ninja huggingface_hub pytest scipy \
        fastapi uvicorn prometheus-client transformers accelerate httpx hypothesis openai
fi
run python -m pip install -q --no-deps -e /root/saguaro
run sh -c 'cd /root/saguaro && exec python -m pytest -q -p no:cacheprovider "$@"' pytest "$@"
