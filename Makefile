# ddm -- build, test and demo entry points.
#
# Layout: every source folder below LIBDIRS becomes one static library made of
# its *.c files except *_main.c; each *_main.c is the main of one binary.
# `make SANITIZE=1 ...` builds everything with ASan+UBSan into build/san/.

# The first rule is the default goal: plain `make` builds the binaries (bin/).
.PHONY: all
all:

CC      ?= gcc
SANITIZE ?= 0
PKGS    := libuv libprotobuf-c nanomsg libcjson libpng openblas

ifeq ($(FUZZ),1)
# the libFuzzer build (`make fuzz`, tests/fuzz/): clang, coverage + ASan + UBSan
CC      := clang
BUILD   := build/fuzz
BIN     := $(BUILD)/bin
SANFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else ifeq ($(SANITIZE),1)
BUILD   ?= build/san
BIN     ?= $(BUILD)/bin
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
BUILD   ?= build/rel
BIN     ?= bin
SANFLAGS :=
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LLHTTP_DIR := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp

CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Werror -pthread -MMD -MP $(SANFLAGS)
CPPFLAGS += -I. -I$(BUILD)/gen -I$(LLHTTP_INC) $(PKG_CFLAGS)
LDFLAGS += -pthread $(SANFLAGS)
LDLIBS  := $(PKG_LIBS) -lz -lm

# ---- generated protobuf code -------------------------------------------------
PROTOS    := $(wildcard proto/ddm/v1/*.proto)
PROTO_C   := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTOS))
PROTO_H   := $(PROTO_C:.c=.h)
PROTO_O   := $(PROTO_C:.c=.o)

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

$(BUILD)/gen/%.pb-c.o: $(BUILD)/gen/%.pb-c.c $(PROTO_H)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# ---- the PyTorch worker (expert-worker/python) ----------------------------------
# protoc writes the Python protobuf code into $(BUILD)/py (ddm/v1/worker_pb2.py);
# bin/ddm-torch-worker and bin/ddm-torch-train are small launchers that run the
# scripts in expert-worker/python with Debian's /usr/bin/python3 and that code.
PY_DIR    := expert-worker/python
PY_GEN    := $(patsubst proto/%.proto,$(BUILD)/py/%_pb2.py,$(PROTOS))
PY_TOOLS  := $(BIN)/ddm-torch-worker $(BIN)/ddm-torch-train
empty    :=
space    := $(empty) $(empty)
# the repository root and $(BUILD)/py as the launcher finds them from its own folder
PY_ROOT   := $(if $(filter /%,$(BIN)),$(CURDIR),$$here/$(subst $(space),/,$(patsubst %,..,$(subst /, ,$(BIN)))))
PY_GENDIR := $(if $(filter /%,$(BUILD)),$(BUILD)/py,$(PY_ROOT)/$(BUILD)/py)

$(BUILD)/py/%_pb2.py: proto/%.proto
	@mkdir -p $(BUILD)/py
	protoc --proto_path=proto --python_out=$(BUILD)/py $<

$(BIN)/ddm-torch-%: $(PY_DIR)/ddm-torch-% $(PY_GEN) Makefile
	@mkdir -p $(dir $@)
	@printf '%s\n' '#!/bin/sh' \
	    '# $(notdir $@) -- written by make: runs $(PY_DIR)/$(notdir $@) with Debian'"'"'s python3' \
	    'here=$$(cd "$$(dirname "$$0")" && pwd)' \
	    'DDM_PY_GEN="$(PY_GENDIR)" exec /usr/bin/python3 "$(PY_ROOT)/$(PY_DIR)/$(notdir $@)" "$$@"' >$@.tmp
	@chmod +x $@.tmp && mv $@.tmp $@

# ---- llhttp, compiled from Debian's node-llhttp sources (not vendored) --------
LLHTTP_O := $(patsubst %,$(BUILD)/llhttp/%.o,api http llhttp)
$(BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -g $(SANFLAGS) -I$(LLHTTP_INC) -w -c -o $@ $<

# ---- files the router serves from its binary -----------------------------------
# The playground (router/playground/*) and the OpenAPI document (docs/openapi.yaml,
# turned into JSON by Debian's yq) become C arrays (mk/embed.sh) that
# router/playground.c includes. Nothing is fetched at build time.
YQ ?= /usr/bin/yq
PLAYGROUND_FILES := router/playground/index.html router/playground/playground.js \
                    router/playground/playground.css
$(BUILD)/gen/playground_assets.h: $(PLAYGROUND_FILES) mk/embed.sh
	@mkdir -p $(dir $@)
	sh mk/embed.sh $@ pg_index_html=router/playground/index.html \
	    pg_js=router/playground/playground.js pg_css=router/playground/playground.css
$(BUILD)/gen/openapi.json: docs/openapi.yaml
	@mkdir -p $(dir $@)
	$(YQ) -c . $< > $@.tmp && mv $@.tmp $@
$(BUILD)/gen/openapi_json.h: $(BUILD)/gen/openapi.json mk/embed.sh
	sh mk/embed.sh $@ openapi_json=$(BUILD)/gen/openapi.json
$(BUILD)/obj/router/playground.o: $(BUILD)/gen/playground_assets.h $(BUILD)/gen/openapi_json.h

# ---- project libraries ---------------------------------------------------------
LIBDIRS := $(if $(filter 1,$(FUZZ)),,tools/eval tools/client tools/train) expert-worker router server common
libname  = $(BUILD)/lib/lib$(subst /,_,$(1)).a
libsrcs  = $(filter-out %_main.c,$(wildcard $(1)/*.c))
LIBS     := $(foreach d,$(LIBDIRS),$(if $(call libsrcs,$(d)),$(call libname,$(d))))
ALL_LIBS := $(LIBS) $(BUILD)/lib/libproto.a $(BUILD)/lib/libllhttp.a

define LIB_RULE
$(call libname,$(1)): $(patsubst %.c,$(BUILD)/obj/%.o,$(call libsrcs,$(1)))
	@mkdir -p $$(dir $$@)
	rm -f $$@ && ar rcs $$@ $$^
endef
$(foreach d,$(LIBDIRS),$(if $(call libsrcs,$(d)),$(eval $(call LIB_RULE,$(d)))))

$(BUILD)/lib/libproto.a: $(PROTO_O)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(BUILD)/lib/libllhttp.a: $(LLHTTP_O)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/obj/%.o: %.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

LINK = $(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) -Wl,--start-group $(ALL_LIBS) -Wl,--end-group $(LDLIBS)

# ---- binaries --------------------------------------------------------------------
MAINS := router/router_main.c expert-worker/expert_main.c tools/train/train_main.c \
         tools/eval/eval_main.c tools/client/client_main.c
binname = $(BIN)/ddm-$(patsubst %_main.c,%,$(notdir $(1)))
BINS := $(foreach m,$(wildcard $(MAINS)),$(call binname,$(m)))
define BIN_RULE
$(call binname,$(1)): $(BUILD)/obj/$(1:.c=.o) $(ALL_LIBS)
	@mkdir -p $$(dir $$@)
	$$(LINK)
endef
$(foreach m,$(wildcard $(MAINS)),$(eval $(call BIN_RULE,$(m))))

# test/bench support code (toy model sets, child processes)
TEST_SUPPORT := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/support/*.c))

# ---- benchmark programs: tools/bench/<name>_main.c -> $(BUILD)/bench/<name> ----
BENCH_MAINS := $(wildcard tools/bench/*_main.c)
BENCH_BINS  := $(patsubst tools/bench/%_main.c,$(BUILD)/bench/%,$(BENCH_MAINS))
$(BUILD)/bench/%: $(BUILD)/obj/tools/bench/%_main.o $(TEST_SUPPORT) $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(LINK)

# ---- chaos soak: tests/soak/soak_main.c -> $(BUILD)/soak/soak ------------------------
SOAK_BIN := $(BUILD)/soak/soak
$(SOAK_BIN): $(BUILD)/obj/tests/soak/soak_main.o $(TEST_SUPPORT) $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(LINK)

# ---- tests -------------------------------------------------------------------------
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_SUPPORT) $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(TEST_SUPPORT) -Wl,--start-group $(ALL_LIBS) -Wl,--end-group $(LDLIBS) -lcmocka

# ---- fuzz targets: tests/fuzz/fuzz_<name>.c -> build/fuzz/bin/fuzz_<name> (FUZZ=1) ---
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS  := $(patsubst %,build/fuzz/bin/fuzz_%,$(FUZZ_NAMES))
ifeq ($(FUZZ),1)
build/fuzz/bin/fuzz_%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $< -Wl,--start-group $(ALL_LIBS) -Wl,--end-group $(LDLIBS)
fuzz-bins: $(FUZZ_BINS)
endif

# ---- entry points --------------------------------------------------------------------
.SECONDARY:
.PHONY: all deps build test test-build clean demo data models bench load eval soak fuzz fuzz-build fuzz-bins
all:
	@sh mk/deps.sh
	@$(MAKE) --no-print-directory build

deps:
	@sh mk/deps.sh

# the emoji rasteriser (FreeType) that `make data` runs on Noto Color Emoji
EMOJI_RASTER := $(BUILD)/tools/emoji-raster
$(EMOJI_RASTER): $(BUILD)/obj/tools/data/emoji_raster.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(LINK) $(shell pkg-config --libs freetype2)
$(BUILD)/obj/tools/data/emoji_raster.o: CPPFLAGS += $(shell pkg-config --cflags freetype2)

data:
	@sh mk/deps.sh
	@$(MAKE) --no-print-directory $(EMOJI_RASTER)
	@EMOJI_RASTER=$(EMOJI_RASTER) sh mk/data.sh

# `make models DATASET=digits|fashion`: the whole training pipeline (k-means
# shards, experts two at a time, router, classifier, monolith, verify) into
# models/$(DATASET)/ with its MANIFEST, and sample grids docs/samples-$(DATASET)-*.png.
# Restartable: finished steps are kept (FORCE=1 redoes everything). See docs/training.md.
# DATASET=emoji is the RGB demonstration set (data/png/emoji, made by `make
# data`): 32x32 RGB on white, K = 8, settings sized to fit well within 45
# minutes on 2 cores (docs/results.md, "Emoji": the measured time).
DATASET ?= digits
TRAIN_DATA_digits  := digits
TRAIN_DATA_fashion := fashion
TRAIN_DATA_emoji   := data/png/emoji --size 32 --channels 3 --background ffffff \
    --hidden 256 --rank 32 --steps 600 --router-steps 600 --cls-steps 600 \
    --mono-steps 300 --mono-batch 256 --samples 200
models: all data
	$(BIN)/ddm-train all --data $(or $(TRAIN_DATA_$(DATASET)),$(DATASET)) --out models/$(DATASET) \
	    --grids docs/samples-$(DATASET) $(if $(filter 1,$(FORCE)),--force)

build: $(BINS) $(PY_TOOLS)

test-build: $(BINS) $(PY_TOOLS) $(TEST_BINS) $(BENCH_BINS) $(SOAK_BIN) fuzz-build

# `make test` installs what is missing, builds, then runs every tests/test_* binary
# (each under a timeout) and ends with "N passed, N failed". tests/test_fuzz runs
# each fuzz target for FUZZ_TEST_SECONDS (20) and replays its regression inputs;
# under SANITIZE=1 it only replays (the fuzz build is sanitized already: a second
# pass would repeat the first).
FUZZ_TEST_SECONDS ?= $(if $(filter 1,$(SANITIZE)),0,20)
test:
	@sh mk/deps.sh
	@$(MAKE) --no-print-directory test-build
	@DDM_BIN_DIR=$(abspath $(BIN)) DDM_FUZZ_DIR=$(abspath build/fuzz/bin) \
	    DDM_FUZZ_SECONDS=$(FUZZ_TEST_SECONDS) sh tests/run.sh $(BUILD)/tests $(TESTS)

# The libFuzzer harnesses (tests/fuzz/, clang with ASan + UBSan; docs/fuzzing.md).
# `make fuzz` runs each target for FUZZ_SECONDS (60); FUZZ_TARGETS picks some
# (default all: $(FUZZ_NAMES)); FUZZ_ARGS go to every fuzzer. The growing corpus
# is kept in build/fuzz/corpus/<target>, crashes in build/fuzz/artifacts/<target>.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(FUZZ_NAMES)
fuzz-build:
	@$(MAKE) --no-print-directory FUZZ=1 fuzz-bins
fuzz: deps
	@$(MAKE) --no-print-directory fuzz-build
	@sh tests/fuzz/run.sh --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS) -- $(FUZZ_ARGS)

# Benchmarks: each tools/bench/<name>.sh is run by `make bench-<name>` after a build.
bench-%: all
	@$(MAKE) --no-print-directory $(BENCH_BINS)
	@BUILD=$(BUILD) BIN=$(BIN) sh tools/bench/$*.sh

bench: all
	@for s in tools/bench/*.sh; do n=$$(basename $$s .sh); $(MAKE) --no-print-directory bench-$$n || exit 1; done

# The digits results table (docs/results/digits/table.md, table.csv, plots) from
# the shipped weights in models/digits: ddm-eval table, under 15 minutes on 2 cores.
eval: all data
	$(BIN)/ddm-eval table --data digits --models models/digits --out docs/results/digits

# `make demo`: start the shipped digits cluster (8 experts + router on loopback),
# write 64-image grids for top-2 and full routing into $(DEMO_OUT), show how to
# call the API, stop everything (on failure and Ctrl-C too). KEEP=1 leaves the
# cluster running.
DEMO_CONF ?= deploy/local/digits.conf
DEMO_OUT  ?= out/demo
DEMO_URL  ?= http://127.0.0.1:8080
demo:
	@m=$$(sed 's/#.*//' $(DEMO_CONF) | awk '$$1 == "models" { print $$2 }'); \
	if [ ! -f "$$m/router.safetensors" ]; then \
	    echo "demo: $$m is missing (no router.safetensors): run make models DATASET=$$(basename "$$m")" >&2; \
	    exit 1; \
	fi
	@$(MAKE) --no-print-directory all
	@cl="sh deploy/local/ddm-cluster"; bin="$(abspath $(BIN))"; conf="$(DEMO_CONF)"; \
	trap 'st=$$?; if [ $$st -ne 0 ] || [ "$(KEEP)" != 1 ]; then $$cl down "$$conf" --bin "$$bin"; fi; exit $$st' EXIT; \
	trap 'exit 130' INT TERM HUP; \
	$$cl up "$$conf" --bin "$$bin" || exit 1; \
	mkdir -p "$(DEMO_OUT)" || exit 1; \
	for s in top-2 full; do \
	    echo; echo "== strategy $$s: 64 images, 50 steps, seed 7"; \
	    "$$bin/ddm-client" sample --url $(DEMO_URL) -n 64 --steps 50 --seed 7 --strategy $$s \
	        -o "$(DEMO_OUT)/$$s.png" || exit 1; \
	done; \
	echo; echo "== experts after the demo requests"; \
	"$$bin/ddm-client" experts --url $(DEMO_URL) || exit 1; \
	echo; echo "Sample grids: $(abspath $(DEMO_OUT))/top-2.png and $(abspath $(DEMO_OUT))/full.png"; \
	echo; echo "Try the API yourself (while the cluster runs; make demo KEEP=1 keeps it up):"; \
	echo "  curl -s $(DEMO_URL)/v1/samples -H 'Content-Type: application/json' \\"; \
	echo "       -d '{\"n\": 2, \"steps\": 50, \"strategy\": \"top-2\", \"seed\": 7}'   # JSON, PNGs in base64"; \
	echo "  curl -s $(DEMO_URL)/v1/samples -H 'Content-Type: application/json' -H 'Accept: image/png' \\"; \
	echo "       -d '{\"n\": 16, \"label\": 7, \"guidance\": 2}' -o sevens.png              # one PNG grid"; \
	echo "  curl -s $(DEMO_URL)/v1/experts; curl -s $(DEMO_URL)/metrics | head"; \
	echo "  $(BIN)/ddm-client sample -n 16 --strategy top-2 --seed 7 -o grid.png"; \
	echo "  (API reference: docs/api.md)"; \
	if [ "$(KEEP)" = 1 ]; then \
	    echo; echo "The cluster keeps running (KEEP=1): stop it with"; \
	    echo "  sh deploy/local/ddm-cluster down $$conf"; \
	    echo "(status: sh deploy/local/ddm-cluster status $$conf; logs in /tmp/ddm-$$(basename $$conf .conf))"; \
	else \
	    echo; echo "Stopping the cluster (make demo KEEP=1 leaves it running)."; \
	fi

# `make soak`: a bounded chaos run on loopback (tests/soak/soak_main.c): the digits
# experts with 2 replicas each and a router under 32 connections, a random replica
# killed or stopped every 10 s and brought back; reports served, failed, p99, RSS
# and fds at start and end. SOAK_SECONDS (default 600) and SOAK_ARGS (soak --help).
SOAK_SECONDS ?= 600
soak: all
	@$(MAKE) --no-print-directory $(SOAK_BIN)
	$(SOAK_BIN) --bin $(BIN) --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

# Load test: the demo cluster under 60 s of POST /v1/samples at 64 connections
# (wrk, tests/load/samples.lua): images/s, latency percentiles, errors (must be
# 0), RSS of the router and workers (must stay flat). LOAD_ARGS: tests/load/run.sh --help.
load: all
	@sh tests/load/run.sh --bin $(BIN) $(LOAD_ARGS)

clean:
	rm -rf build bin

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
