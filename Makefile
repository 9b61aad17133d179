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

.PHONY: install oracle native test test-sanitize test-kernels test-arm64 insns-arm64 fuzz demo bench lint clean

install: $(VENV)/.installed

# The oracle's wheel, built once with CMAKE_ARGS into a folder named after the version and a hash of those flags, and
# installed from there. pip's wheel cache is keyed by the sdist alone, not by CMAKE_ARGS: a llama-cpp-python built
# earlier on this machine with other flags (natively, with AVX512) would otherwise be installed silently, and the
# tolerances of the oracle tests hold for the build made here (tests/oracle.py checks it at session start).
ORACLE     := llama-cpp-python==0.3.36
ORACLE_KEY := $(shell printf '%s' '$(ORACLE) $(CMAKE_ARGS)' | sha256sum | cut -c1-12)
ORACLE_DIR := build/wheels/$(subst ==,-,$(ORACLE))-$(ORACLE_KEY)

ORACLE_INSTALL = $(PIP) install -q --disable-pip-version-check --no-deps --force-reinstall $(ORACLE_DIR)/*.whl

# the oracle's wheel (built if missing) installed over whatever build of llama-cpp-python the venv holds
oracle: $(ORACLE_DIR)/.built
	$(ORACLE_INSTALL)

$(ORACLE_DIR)/.built:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -rf $(ORACLE_DIR) $(ORACLE_DIR).tmp
	$(PIP) wheel -q --disable-pip-version-check --no-cache-dir --no-deps --no-binary llama-cpp-python \
		-w $(ORACLE_DIR).tmp '$(ORACLE)'
	printf '%s\n' '$(CMAKE_ARGS)' > $(ORACLE_DIR).tmp/CMAKE_ARGS
	touch $(ORACLE_DIR).tmp/.built
	mv $(ORACLE_DIR).tmp $(ORACLE_DIR)

# The oracle's converter (convert_hf_to_gguf.py, conversion/, gguf-py/ of the llama.cpp it vendors) and its sample
# grammars (grammars/), taken from its source package: the tests compare the files we write with the ones it writes on
# the same checkpoints, and our grammar engine with its on those grammars. The marker names what was extracted.
ORACLE_SRC := build/$(subst ==,-,$(ORACLE))-converter

$(ORACLE_SRC)/.done-with-grammars:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -rf $(ORACLE_SRC) $(ORACLE_SRC).tmp
	$(PIP) download -q --disable-pip-version-check --no-deps --no-binary :all: -d $(ORACLE_SRC).tmp '$(ORACLE)'
	tar -xzf $(ORACLE_SRC).tmp/*.tar.gz -C $(ORACLE_SRC).tmp --strip-components=3 --wildcards \
		'*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion' '*/vendor/llama.cpp/gguf-py' \
		'*/vendor/llama.cpp/grammars'
	rm $(ORACLE_SRC).tmp/*.tar.gz
	touch $(ORACLE_SRC).tmp/.done-with-grammars
	mv $(ORACLE_SRC).tmp $(ORACLE_SRC)

# torch first, pinned to the CPU build on disk; then the oracle from its own wheel (--force-reinstall: whatever build of
# the same version the venv held before is replaced); then the package (editable: the native core is built in place, so
# `import native` works from the source tree too) with its test extra, which finds the oracle's version installed.
$(VENV)/.installed: pyproject.toml setup.py $(wildcard native/*.c native/*.h) $(ORACLE_DIR)/.built $(ORACLE_SRC)/.done-with-grammars
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(ORACLE_INSTALL)
	$(PIP) install -q --disable-pip-version-check -e '.[test]'
	touch $@

native: install
	$(PY) setup.py -q build_ext --inplace

# The suite in PYTEST_WORKERS processes (pytest-xdist; 0: in this one), each test module in one of them so that its
# module-scoped fixtures (models, converted files) are made once: a full run on this 2-core machine took 18 min
# instead of 30. The fast set alone: `.venv/bin/python -m pytest -m "not slow"`.
PYTEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope

# The native core built with AddressSanitizer + UndefinedBehaviorSanitizer into $(SAN_DIR)/native (the package's .py
# files beside the sanitized _core; the in-place native/_core*.so of `make test` is left alone), then the kernel tests
# for every weight type and the in-process forward-pass tests (which run both kernel paths themselves) on it, and the
# kernel tests again with the scalar path forced; issue 18's in-process tests of the engine on damaged tensors and sizes
# run with the forward-pass ones. Python is not ASan-built, so the sanitizer runtimes are preloaded; CPython never frees
# some memory by design, so no leak check; an allocation that cannot be had returns NULL as it does without ASan (the
# engine reports it) instead of aborting. A report aborts the test process and fails the target;
# --capture=sys leaves the C-level stderr alone so that the report is seen. pytest is started from `python -c` so that
# the recipe checks afterwards, in the process that ran the tests, that the `native._core` they used is the sanitized
# one ($(SAN_DIR) comes first on sys.path: pytest's `pythonpath` setting is overridden with it and the repo root).
# SAN_ARGS: more pytest arguments (e.g. -x, --deselect). The timeout turns a hang (a thread pool that loses a wake-up
# under the sanitizers' slower timing) into a failure.
SAN_CC      ?= gcc
SAN_TIMEOUT ?= 1200
SAN_ARGS    ?=
SAN_DIR     := build/sanitize
SAN_ENV      = env LD_PRELOAD="$$($(SAN_CC) -print-file-name=libasan.so) $$($(SAN_CC) -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=1:allocator_may_return_null=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
SAN_PYTEST   = timeout $(SAN_TIMEOUT) $(SAN_ENV) $(PY) -c 'import sys, pytest; rc = pytest.main(sys.argv[1:]); \
	core = sys.modules["native._core"].__file__; print("tests ran on", core); \
	sys.exit(rc or (0 if core.startswith("$(CURDIR)/$(SAN_DIR)/native/") else "not the sanitized build"))' \
	-q --capture=sys -p no:cacheprovider -o pythonpath="$(CURDIR)/$(SAN_DIR) ." $(SAN_ARGS)
SAN_KERNELS := tests/test_native_convert.py tests/test_quants_legacy.py tests/test_quants_k_oracle.py \
	tests/test_quants_simd.py tests/test_matmul.py
# test_against_llama_cpp for the weight types whose files are quick to make (the IQ3/IQ2_S/IQ1 files' grid searches
# take minutes under ASan): one of each kind of kernel (float, legacy, k-quant, IQ, ternary), both paths for a few;
# the kernel tests above run every type under the sanitizers
SAN_TYPES   := simd-F32 simd-F16 simd-BF16 simd-Q8_0 simd-Q4_0 simd-Q4_1 simd-Q4_K simd-Q6_K simd-IQ4_XS simd-IQ2_XXS \
	simd-TQ2_0 scalar-F16 scalar-Q4_0 scalar-Q4_K scalar-IQ2_XXS
SAN_FORWARD := tests/test_runtime.py::test_logits_match_reference \
	$(foreach t,$(SAN_TYPES),'tests/test_runtime.py::test_against_llama_cpp[$(t)]') \
	tests/test_runtime.py::test_api_shapes tests/test_runtime.py::test_wide_feed_forward_activation_rows \
	tests/test_embeddings.py::test_hidden_states_beside_logits_in_one_pass \
	$(addprefix tests/test_hardening.py::,test_engine_takes_the_good_file \
	test_engine_rejects_bad_tensors test_engine_rejects_a_huge_layer_number test_engine_rejects_sizes_out_of_range \
	test_kv_cache_size_overflow test_damaged_files_in_process test_quantizers_take_rows_with_non_finite_values)

test-sanitize: install
	CC=$(SAN_CC) TOOLKIT_SANITIZE=1 $(PY) setup.py -q build_ext --build-lib $(SAN_DIR) --build-temp $(SAN_DIR)-tmp
	cp native/*.py $(SAN_DIR)/native/
	$(SAN_PYTEST) $(SAN_KERNELS) $(SAN_FORWARD)
	TOOLKIT_FORCE_SCALAR=1 $(SAN_PYTEST) $(SAN_KERNELS)

# The native core's checks without Python: tests/native/kernel_check.c (every SIMD kernel at every instruction-set
# level the CPU has against the scalar reference) and tests/native/forward_check.c (stories260K's forward pass at every
# level against the logits the runtime recorded on x86, in the bundle tests/native/reference_bundle.py writes into
# $(REF_BUNDLE) when missing: our converter's and quantizer's files, checked against llama.cpp before they are kept;
# needs `make install` and ../shared/fixtures; kept until the writer changes, so that it witnesses the core as it was:
# remove it after a change meant to move the logits). test-kernels builds and runs both on this machine; test-arm64
# cross-compiles them for ARM64 (static, Debian's gcc-aarch64-linux-gnu; apt-get installs it and qemu-user when
# missing) and runs them under qemu-aarch64 twice: -cpu max (NEON, dotprod, i8mm: all three levels) and -cpu
# cortex-a53 (ARMv8.0: the NEON baseline alone). Same flags as setup.py's (no FP contraction).
KC_CFLAGS  := -std=c11 -O2 -ffp-contract=off -fno-math-errno -Wall -Wno-unused-function -Inative
CORE_C      = $(filter-out native/module.c,$(wildcard native/*.c))
REF_BUNDLE := build/native-ref
ARM64_CC   ?= aarch64-linux-gnu-gcc
QEMU_ARM64 ?= qemu-aarch64
ARM64_CPUS ?= max cortex-a53

$(REF_BUNDLE)/cases.txt: tests/native/reference_bundle.py
	$(PY) tests/native/reference_bundle.py $(REF_BUNDLE) $(SHARED)/fixtures

# the core compiled once into DIR/core (stale objects removed), then each driver linked with it: $(call drivers,CC,DIR,FLAGS)
drivers = rm -rf $(2)/core && mkdir -p $(2)/core && cd $(2)/core && $(1) $(3) -c $(abspath $(CORE_C)) && cd $(CURDIR) && \
	for d in kernel_check forward_check; do $(1) $(3) tests/native/$$d.c $(2)/core/*.o -lm -pthread -o $(2)/$$d || exit 1; done

test-kernels: $(REF_BUNDLE)/cases.txt
	$(call drivers,$(CC),build/native,$(KC_CFLAGS) -I$(CURDIR)/native)
	build/native/kernel_check
	build/native/forward_check $(REF_BUNDLE)

test-arm64: $(REF_BUNDLE)/cases.txt
	command -v $(ARM64_CC) >/dev/null && command -v $(QEMU_ARM64) >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
	$(call drivers,$(ARM64_CC),build/arm64,-static $(KC_CFLAGS) -I$(CURDIR)/native)
	for cpu in $(ARM64_CPUS); do echo "== qemu-aarch64 -cpu $$cpu"; \
		$(QEMU_ARM64) -cpu $$cpu build/arm64/kernel_check && \
		$(QEMU_ARM64) -cpu $$cpu build/arm64/forward_check $(REF_BUNDLE) || exit 1; done

# Guest instructions per weight of one-token products under qemu-aarch64 (scalar, NEON, dotprod; a TCG plugin counts
# them), and per generated token of stories260K's forward pass (the reference bundle's files): a measurement, not a
# test, and not wall-clock speed on ARM hardware. Needs what test-arm64 installs.
insns-arm64: $(REF_BUNDLE)/cases.txt
	tests/native/insn_counts.sh build/arm64 $(REF_BUNDLE)

# Issue 18's fuzz targets, each for FUZZ_SECONDS: atheris on the Python readers (tests/fuzz/fuzz_python.py: GGUF,
# safetensors, config.json, tokenizer.json, the model loader with the engine) from seed corpora written from the tiny
# fixtures, then libFuzzer with ASan/UBSan on the C entry points (tests/fuzz/fuzz_native.c: tk_engine_new over
# descriptors, a forward pass, the quantize/dequantize rows; cpu.c is built by gcc without instrumentation: clang
# 14 does not know its avxvnni and f16c checks). clang comes from apt when missing. A finding fails the target and leaves its
# input in build/fuzz/findings/: keep it in tests/fuzz-corpus/<target>/ once fixed (those inputs are replayed first).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= gguf safetensors config tokenizer model
FUZZ_DIR     := build/fuzz
FUZZ_FLAGS    = -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=30 -print_final_stats=1

fuzz: install
	command -v clang >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang)
	$(PY) -c 'import atheris' 2>/dev/null || $(PIP) install -q --disable-pip-version-check atheris
	mkdir -p $(FUZZ_DIR)/findings
	test -d $(FUZZ_DIR)/tokenizer-seed || $(PY) -m tests.fuzz.seeds $(FUZZ_DIR)
	for t in $(FUZZ_TARGETS); do mkdir -p tests/fuzz-corpus/$$t; \
		FUZZ_TOKENIZER_SEED=$(FUZZ_DIR)/tokenizer-seed $(PY) tests/fuzz/fuzz_python.py $$t $(FUZZ_FLAGS) \
			-max_len=524288 -artifact_prefix=$(FUZZ_DIR)/findings/$$t- $(FUZZ_DIR)/corpus-$$t tests/fuzz-corpus/$$t \
			|| exit 1; done
	gcc -std=c11 -O2 -g -ffp-contract=off -c native/cpu.c -o $(FUZZ_DIR)/cpu.o
	clang -std=c11 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -ffp-contract=off \
		-Inative tests/fuzz/fuzz_native.c $(filter-out native/module.c native/cpu.c,$(wildcard native/*.c)) \
		$(FUZZ_DIR)/cpu.o -lm -pthread -o $(FUZZ_DIR)/fuzz_native
	mkdir -p $(FUZZ_DIR)/corpus-native tests/fuzz-corpus/native
	$(FUZZ_DIR)/fuzz_native $(FUZZ_FLAGS) -max_len=8192 -artifact_prefix=$(FUZZ_DIR)/findings/native- \
		$(FUZZ_DIR)/corpus-native tests/fuzz-corpus/native

# Real text first (stories260K, a trained tiny Llama), then the seed's workflow on a CodeShell-shaped model whose
# weights are random (so its text is noise, and the demo says so before printing it).
demo: install
	mkdir -p $(DEMO)
	$(VENV)/bin/toolkit convert $(SHARED)/fixtures/stories260K 0 --outfile $(DEMO)/stories260K-f32.gguf
	$(VENV)/bin/toolkit run -m $(DEMO)/stories260K-f32.gguf -p "Once upon a time" -n 60 --temp 0
	$(PY) -m fixtures tiny codeshell $(DEMO)/codeshell-tiny --n-layer 4 --dtype bfloat16
	$(VENV)/bin/toolkit convert $(DEMO)/codeshell-tiny 1
	$(VENV)/bin/toolkit quantize $(DEMO)/codeshell-tiny/ggml-model-f16.gguf Q4_0
	$(VENV)/bin/toolkit info $(DEMO)/codeshell-tiny/ggml-model-Q4_0.gguf
	@echo "The CodeShell-shaped demo model has random weights: the text below is noise, it shows the workflow runs."
	$(VENV)/bin/toolkit run -m $(DEMO)/codeshell-tiny/ggml-model-Q4_0.gguf -p "def fibonacci(n):" -n 24 -s 1

bench: install
	$(PY) -m benchmarks --data $(BENCH) $(BENCH_ARGS)

lint:
	$(PY) -m pyflakes toolkit converter native fixtures tests benchmarks 2>/dev/null || true

clean:
	find build -mindepth 1 -maxdepth 1 ! -name wheels ! -name '*-converter' -exec rm -rf {} + 2>/dev/null || true  # the oracle stays
	rm -rf *.egg-info native/*.so $(DEMO)
