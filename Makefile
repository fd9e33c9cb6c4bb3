# The two commands a lab engineer needs: `make demo` and `make test`.
# Both install what is missing first (Debian packages, the pdudaemon and test-tool venvs).

CARGO ?= cargo
APLAB := target/debug/aplab

.PHONY: deps demo test fmt-check clippy unit bench fuzz clean

deps:
	@scripts/install-deps
	@scripts/install-pdudaemon
	@scripts/install-test-tools

# The nightly suite: health checks, end-to-end pre-provisioning for both join types
# (technician flow, the 90-minute gap, user flow), TPM evidence and the negative cases.
NIGHTLY := health-check preprovision-e2e tpm-attestation negative-home-edition \
	negative-rerun-without-reset negative-user-too-soon

demo: deps
	$(CARGO) build --bin aplab
	$(APLAB) validate
	$(APLAB) plan $(patsubst %,scenarios/%.yaml,$(NIGHTLY))
	$(APLAB) run $(NIGHTLY)

test: deps fmt-check clippy unit

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --lib --bins --tests

bench: deps
	bench/run-all

clean:
	$(CARGO) clean
