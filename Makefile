# Thin wrappers over the real commands. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
SHARED ?= ../shared
DEMO   ?= demo
BENCH  ?= bench-data
# llama-cpp-python (the test oracle) is built from source: only its library, in parallel. Not -march=native: these
# machines advertise AMX, which the VM does not let processes use, and ggml's AMX kernels then die with SIGILL; an
# explicit AVX2/FMA/F16C build is portable across the machines CI may run on.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: install native test demo bench lint clean

install: $(VENV)/.installed

# torch first, pinned to the CPU build on disk; then the package (editable: the native core is built in place, so
# `import native` works from the source tree too) with its test extra.
$(VENV)/.installed: pyproject.toml setup.py $(wildcard native/*.c native/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[test]'
	touch $@

native: install
	$(PY) setup.py -q build_ext --inplace

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m fixtures tiny codeshell $(DEMO)/codeshell-tiny --n-layer 4 --dtype bfloat16
	$(VENV)/bin/toolkit convert $(DEMO)/codeshell-tiny 1
	$(VENV)/bin/toolkit quantize $(DEMO)/codeshell-tiny/ggml-model-f16.gguf Q4_0
	$(VENV)/bin/toolkit info $(DEMO)/codeshell-tiny/ggml-model-Q4_0.gguf
	$(VENV)/bin/toolkit run -m $(DEMO)/codeshell-tiny/ggml-model-Q4_0.gguf -p "def fibonacci(n):" -n 24 -s 1
	$(VENV)/bin/toolkit convert $(SHARED)/fixtures/stories260K 0 --outfile $(DEMO)/stories260K-f32.gguf
	$(VENV)/bin/toolkit run -m $(DEMO)/stories260K-f32.gguf -p "Once upon a time" -n 60 --temp 0

bench: install
	$(PY) -m benchmarks --data $(BENCH) $(BENCH_ARGS)

lint:
	$(PY) -m pyflakes toolkit converter native fixtures tests benchmarks 2>/dev/null || true

clean:
	rm -rf build *.egg-info native/*.so $(DEMO)
