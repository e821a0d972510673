#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each, one after the other, for SECONDS (default 600):
# first over its committed reproducers (fuzz/regressions/<target>/, each must pass), then fuzzing from its
# corpus (fuzz/corpus/<target>/: the committed seed-* files plus whatever earlier runs added). Stops at the
# first crash; libFuzzer writes the input under fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     all targets, or the ones named
#
# Uses the nightly toolchain when rustup has one; otherwise the default toolchain with RUSTC_BOOTSTRAP=1
# (cargo-fuzz needs nightly-only flags such as -Zsanitizer). Installs cargo-fuzz when missing.
# FUZZ_BUILD_ARGS adds arguments to `cargo fuzz build` and `run` (CI passes `-s none`); FUZZ_ARGS adds
# libFuzzer options (e.g. FUZZ_ARGS=-jobs=2).
#
# A new target: a file in fuzz/fuzz_targets/, a [[bin]] in fuzz/Cargo.toml, and seeds from
# fuzz/examples/seeds.rs. This script finds it through `cargo fuzz list`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-600}
shift || true
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2; }

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    echo "==> no nightly toolchain: using $(rustc --version) with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
read -r -a build_args <<<"${FUZZ_BUILD_ARGS:-}"
read -r -a fuzz_args <<<"${FUZZ_ARGS:-}"

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <("${fuzz[@]}" list)
fi

echo "==> building ${targets[*]}"
"${fuzz[@]}" build "${build_args[@]}"

for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    if [[ -d regressions/$target ]]; then
        echo "==> $target: reproducers in fuzz/regressions/$target"
        "${fuzz[@]}" run "${build_args[@]}" "$target" "regressions/$target" -- -runs=0
    fi
    echo "==> $target: fuzzing for ${seconds}s"
    "${fuzz[@]}" run "${build_args[@]}" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 "${fuzz_args[@]}"
done
