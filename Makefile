# The two commands a lab engineer needs: `make demo` and `make test`.
# Both install what is missing first (Debian packages, the pdudaemon venv).

CARGO ?= cargo
APLAB := target/release/aplab

.PHONY: deps demo test fmt-check clippy unit bench fuzz clean

deps:
	@scripts/install-deps
	@scripts/install-pdudaemon

demo: deps
	$(CARGO) build --release --bin aplab
	$(APLAB) validate
	$(APLAB) plan
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
