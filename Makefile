# The two commands a lab engineer needs: `make demo` and `make test`.
# Both install what is missing first (Debian packages, the pdudaemon and test-tool venvs).

CARGO ?= cargo
APLAB := target/debug/aplab

.PHONY: deps demo test fmt-check clippy unit bench fuzz clean

deps:
	@scripts/install-deps
	@scripts/install-pdudaemon
	@scripts/install-test-tools

demo: deps
	$(CARGO) build --bin aplab
	$(APLAB) run

test: deps fmt-check clippy unit

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --all-targets

bench: deps
	bench/run-all

clean:
	$(CARGO) clean
