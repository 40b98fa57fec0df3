# depthlab: one command to set up and run a quick reproduction, one to run the tests.
#   make quick    install into .venv, then VGG Table 1 quick profile (CPU, minutes)
#   make test     the test suite on jax, tensorflow and torch (what CI runs)
#   make test-all the same plus the slow-marked claims on every backend
#   make ui       the MLflow UI on the project's store, with each study's direct link

VENV     ?= .venv
PY       := $(VENV)/bin/python
BACKEND  ?= torch
SHARED   := $(abspath ../shared/data)
# Offline data: the shared copies when they sit beside the repository, else the user cache.
ifneq ($(wildcard $(SHARED)/cifar10.npz),)
export DEPTHLAB_DATA_DIR ?= $(SHARED)
endif
export TF_CPP_MIN_LOG_LEVEL ?= 3
PYTEST   := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: install quick test test-all lint ui clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[tensorflow,ray,test]"
	touch $@

quick: install
	$(PY) -m depthlab.reproductions.vgg --table 1 --profile quick --backend $(BACKEND)

# Unit tests, serialisation, counts and the quick claims on every backend; the tests
# marked once (whole commands, the UI, cross-backend gradients, the installed wheel) in
# a pass of their own on jax; the claims marked slow once, on torch (README "Tests").
test: install
	@for b in jax tensorflow torch; do \
	  echo "=== KERAS_BACKEND=$$b"; \
	  KERAS_BACKEND=$$b $(PYTEST) -m "not slow and not once" || exit 1; \
	done
	@echo "=== KERAS_BACKEND=jax (once: commands, UI, cross-backend checks)"
	KERAS_BACKEND=jax $(PYTEST) -m "once and not slow"
	@echo "=== KERAS_BACKEND=torch (slow claims)"
	KERAS_BACKEND=torch $(PYTEST) -m slow

test-all: install
	@for b in jax tensorflow torch; do \
	  echo "=== KERAS_BACKEND=$$b"; KERAS_BACKEND=$$b $(PYTEST) || exit 1; done

ui: install
	$(PY) -m depthlab.ui

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
