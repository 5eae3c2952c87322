#!/usr/bin/env bash
# Sourced by scripts/miri.sh and scripts/tsan.sh: makes sure the nightly
# toolchain and the components they need are there. Idempotent and fast when
# they are (one `rustup component list`, no network).
#
#   ensure_nightly miri rust-src
#
# NIGHTLY selects the toolchain (default `nightly`; pin one, e.g.
# NIGHTLY=nightly-2026-05-19, if a new nightly ever lacks a component).
NIGHTLY=${NIGHTLY:-nightly}

ensure_nightly() {
    local comps=("$@")
    if ! rustup run "$NIGHTLY" rustc -V >/dev/null 2>&1; then
        local csv
        csv=$(IFS=,; echo "${comps[*]}")
        echo "== installing toolchain $NIGHTLY ($csv)" >&2
        rustup toolchain install "$NIGHTLY" --profile minimal --component "$csv" >&2
        return
    fi
    local have missing=()
    have=$(rustup component list --toolchain "$NIGHTLY" --installed)
    for c in "${comps[@]}"; do
        # Installed components are listed as `miri-x86_64-...` or `rust-src`.
        grep -Eq "^$c(-|$)" <<<"$have" || missing+=("$c")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== adding ${missing[*]} to $NIGHTLY" >&2
        rustup component add --toolchain "$NIGHTLY" "${missing[@]}" >&2
    fi
}
