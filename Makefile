# assistantd — see README.md.
CARGO ?= cargo
BIN := target/release/assistantd
RUN_STATE := run-state

.PHONY: all build run test test-deps lint bench fuzz demo clean-run

all: build

build:
	$(CARGO) build --release

# Serves a copy of the embedded default state (state/ → run-state/, ignored by git), so a dev
# run never dirties the checkout. `init` adds the token, VAPID keys and workspace files.
run: build
	mkdir -p $(RUN_STATE)
	cp -rn state/. $(RUN_STATE)/
	$(BIN) init --state $(RUN_STATE)
	$(BIN) serve --state $(RUN_STATE)

# The examples (bench tools) have no tests: they are only built, so that the last line cargo
# prints is the integration suite's result, not an empty example's "0 passed".
test: test-deps
	$(CARGO) build --examples
	$(CARGO) test --lib --bins --tests -- --test-threads=4

# Test-only: the Python Web Push verifier's packages and the real OpenCode server (npm), into
# .ci/opencode (ignored by git). Quick when they are there.
test-deps:
	bash .ci/install-test-deps

# Structure-aware random fuzzing of every body parser and state-file reader (FUZZ_SECS).
FUZZ_SECS ?= 120
fuzz:
	FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test --release --test integration fuzz -- --nocapture

# See a notification arrive, decrypted, without a browser (needs tests/requirements.txt).
demo: build
	bash scripts/demo.sh

# Release build, then one table: req/s and latency (with a floor), RSS, start time, binary
# size, push fan-out and crypto cost. See bench/run.sh for BENCH_* knobs; wrk is optional.
bench:
	CARGO="$(CARGO)" bench/run.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

clean-run:
	rm -rf $(RUN_STATE)
