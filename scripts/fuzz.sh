#!/usr/bin/env bash
# Runs the libFuzzer targets in Fuzz/ (ClientHello parser, request-head parsing, CONNECT authority parser, the
# HTTP/1.1 codec against llhttp on requests and on responses), each
# for SECONDS (default 60), side by side, from a copy of the seed corpus in Tests/FuzzCorpusTests/Corpus.
# Part of `make test`. A crash, a leak of memory past the limit or a timeout fails the run; the input is saved
# under Fuzz/crashes/ (add it to the seed corpus once fixed, so FuzzCorpusTests replays it for good).
#
# Longer runs: scripts/fuzz.sh 3600, or one target by hand:
#   (cd Fuzz && swift build --sanitize=fuzzer) && Fuzz/.build/debug/fuzz-request-head -max_total_time=3600 CORPUS_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
(cd Fuzz && swift build --sanitize=fuzzer 2>&1 | grep -E "error|warning: unre|Build complete" || true)
work=$(mktemp -d /tmp/kz-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p Fuzz/crashes
pids=()
targets="clienthello request-head connect-authority http1-differential http1-response-differential"
for target in $targets; do
    # The request differential starts from the request-head seeds (both read client byte streams); the response
    # differential from its own seeds in Corpus/response.
    seeds=$target
    [ "$target" = http1-differential ] && seeds=request-head
    [ "$target" = http1-response-differential ] && seeds=response
    cp -r "Tests/FuzzCorpusTests/Corpus/$seeds" "$work/$target"
    Fuzz/.build/debug/fuzz-$target -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="Fuzz/crashes/$target-" "$work/$target" >"$work/$target.log" 2>&1 &
    pids+=($!)
done
status=0
for index in "${!pids[@]}"; do
    target=$(echo $targets | cut -d' ' -f$((index + 1)))
    if wait "${pids[$index]}"; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$target.log" | grep -o '[0-9]*$' || echo "?")
        echo "fuzz: $target: no crash in ${seconds}s, $runs inputs"
    else
        status=1
        echo "fuzz: $target FAILED; the input is in Fuzz/crashes/:" >&2
        grep -E "ERROR|Fatal|panic|SUMMARY|crash-|timeout-|oom-" "$work/$target.log" | head -20 >&2
    fi
done
exit $status
