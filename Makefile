# xenresume Makefile.
#
#   make run     build runvm and boot the embedded guest stub on KVM (needs
#                only Go: the guest image is committed)
#   make test    every check CI runs: formatting, vet, staticcheck, the
#                committed guest image and ABI types are fresh, the README
#                walkthrough, XTF's tables of every environment (make xtf),
#                and go test -race ./...
#   make guest   rebuild the guest stub image (byte for byte reproducible)
#   make bench   the benchmarks behind docs/PERFORMANCE.md
#   make fuzz    every fuzz target for FUZZTIME each (default 60s)
#   make deps    unpack the Debian packages the build and tests use
#   make xtf     XTF's pv64, hvm64, hvm32, hvm32pae and hvm32pse cases under
#                runvm create, against the committed tables (make xtf-update
#                rewrites them; docs/XTF.md)

GO          ?= go
CC          := gcc
LD          := ld
XEN_CACHE   ?= $(CURDIR)/.cache/xen
XEN_ROOT    := $(XEN_CACHE)/root
XEN_INC     := $(XEN_ROOT)/usr/include

# Tools the tests use, from the unpacked packages (see scripts/xen-deps.sh).
export XENRESUME_XEN_ROOT := $(XEN_ROOT)

# The committed image, and where make guest builds it (the committed one
# has no rule, so make run never needs a C toolchain).
GUEST_ELF  := guest/xenresume-stub.elf
GUEST_OUT  := .cache/guest/xenresume-stub.elf
GUEST_SRCS := guest/src/head.S guest/src/main.c guest/src/result.c guest/src/tests.c guest/src/lib.c guest/src/evtchn.c guest/src/xs.c guest/src/suspend.c guest/src/blkfront.c guest/src/smp.c guest/src/conseq.c
GUEST_HDRS := $(wildcard guest/src/*.h) guest/src/guest.lds
GUEST_OBJS := $(patsubst guest/src/%,.cache/guest/%.o,$(GUEST_SRCS))

# The HVM/PVH build (guest/src/hvm.c and head_hvm.S, with the PV build's
# console, event-channel and xenstore code), identity-mapped at 1 MiB.
GUEST_HVM_ELF  := guest/xenresume-stub-hvm.elf
GUEST_HVM_OUT  := .cache/guest-hvm/xenresume-stub-hvm.elf
GUEST_HVM_SRCS := guest/src/head_hvm.S guest/src/hvm.c guest/src/result.c guest/src/lib.c guest/src/evtchn.c guest/src/xs.c
GUEST_HVM_OBJS := $(patsubst guest/src/%,.cache/guest-hvm/%.o,$(GUEST_HVM_SRCS))

GUEST_CFLAGS := -std=gnu11 -O2 -Wall -Wextra -Werror -Wno-unused-parameter \
	-ffreestanding -fno-pic -fno-pie -mcmodel=kernel -mno-red-zone \
	-mgeneral-regs-only -fno-stack-protector -fno-asynchronous-unwind-tables \
	-fno-ident -fcf-protection=none \
	-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__ \
	-Iguest/src -I$(XEN_INC)
GUEST_LDFLAGS := -m elf_x86_64 -T guest/src/guest.lds --build-id=none \
	-z max-page-size=4096 -z noexecstack -nostdlib --no-warn-rwx-segments
GUEST_HVM_CFLAGS  := $(GUEST_CFLAGS) -DVIRT_BASE=0UL
GUEST_HVM_LDFLAGS := $(subst guest/src/guest.lds,guest/src/hvm.lds,$(GUEST_LDFLAGS))

.PHONY: fuzz all run test guest guest-check deps bench vet fmt-check staticcheck godefs godefs-check walkthrough clean xtf xtf-build xtf-update

all: bin/runvm

bin/runvm: $(shell find cmd vmm asm guest -name '*.go') $(GUEST_ELF) $(GUEST_HVM_ELF) go.mod
	$(GO) build -o $@ ./cmd/runvm

run: bin/runvm
	./bin/runvm run

deps:
	scripts/xen-deps.sh $(XEN_CACHE)

$(XEN_INC)/xen/xen.h:
	scripts/xen-deps.sh $(XEN_CACHE)

guest: $(GUEST_OUT) $(GUEST_HVM_OUT)
	cp $(GUEST_OUT) $(GUEST_ELF)
	cp $(GUEST_HVM_OUT) $(GUEST_HVM_ELF)

.cache/guest/%.S.o: guest/src/%.S $(GUEST_HDRS) | $(XEN_INC)/xen/xen.h
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_CFLAGS) -D__ASSEMBLY__ -c -o $@ $<

.cache/guest/%.c.o: guest/src/%.c $(GUEST_HDRS) | $(XEN_INC)/xen/xen.h
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_CFLAGS) -c -o $@ $<

$(GUEST_OUT): $(GUEST_OBJS) guest/src/guest.lds
	$(LD) $(GUEST_LDFLAGS) -o $@ $(GUEST_OBJS)

.cache/guest-hvm/%.S.o: guest/src/%.S $(GUEST_HDRS) | $(XEN_INC)/xen/xen.h
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_HVM_CFLAGS) -D__ASSEMBLY__ -c -o $@ $<

.cache/guest-hvm/%.c.o: guest/src/%.c $(GUEST_HDRS) | $(XEN_INC)/xen/xen.h
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_HVM_CFLAGS) -c -o $@ $<

$(GUEST_HVM_OUT): $(GUEST_HVM_OBJS) guest/src/hvm.lds
	$(LD) $(GUEST_HVM_LDFLAGS) -o $@ $(GUEST_HVM_OBJS)

# CI: rebuild both guest builds from source and fail when a committed
# image differs.
guest-check: | $(XEN_INC)/xen/xen.h
	rm -rf .cache/guest .cache/guest-hvm
	$(MAKE) --no-print-directory $(GUEST_OUT) $(GUEST_HVM_OUT)
	@cmp $(GUEST_OUT) $(GUEST_ELF) || { \
	  echo "guest-check: $(GUEST_ELF) is stale: run 'make guest' and commit it"; exit 1; }
	@cmp $(GUEST_HVM_OUT) $(GUEST_HVM_ELF) || { \
	  echo "guest-check: $(GUEST_HVM_ELF) is stale: run 'make guest' and commit it"; exit 1; }

# Regenerate the Go ABI types from Xen's public headers (the x/sys way).
godefs: | $(XEN_INC)/xen/xen.h
	cd vmm/xenabi && $(GO) tool cgo -objdir $$(mktemp -d) -godefs -- -I$(XEN_INC) \
	  -D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__ defs.go \
	  | sed '2s|.*|// make godefs: go tool cgo -godefs defs.go, against libxen-dev 4.17|' \
	  | gofmt > ztypes_amd64.go.new && mv ztypes_amd64.go.new ztypes_amd64.go

# CI: the committed ABI types match what the headers generate.
godefs-check: godefs
	@git diff --exit-code --stat vmm/xenabi/ztypes_amd64.go || { \
	  echo "godefs-check: vmm/xenabi/ztypes_amd64.go is stale: run 'make godefs' and commit it"; exit 1; }

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# staticcheck is pinned by the tool directive in go.mod (go.sum has its hash).
staticcheck:
	$(GO) tool staticcheck ./...

# The README's runvm walkthrough, pasted in order against a fresh runtime
# directory, each printed line checked.
walkthrough: bin/runvm
	scripts/walkthrough.sh bin/runvm

# XTF (the Xen Test Framework, ../shared/third_party/xtf, read-only there)
# is copied to .cache/xtf when missing or stale and built there; every
# tests/*/test-ENV-*.cfg of each environment in XTF_ENVS then runs under
# `runvm create`, each with a time limit and an idle limit, and each
# environment's table of results must equal its committed one: a
# regression and an improvement both fail until `make xtf-update`
# rewrites testdata/xtf-ENV.txt and it is committed. Every environment
# runs even when an earlier one differs. XTF_ARGS passes more flags (-run
# REGEXP, -v, -j N; see internal/xtf); XTF_ENVS=pv64 picks one.
XTF_SRC     ?= $(CURDIR)/../shared/third_party/xtf
XTF_DIR     := $(CURDIR)/.cache/xtf
XTF_TIMEOUT ?= 15s
XTF_IDLE    ?= 5s
XTF_ARGS    ?=
XTF_ENVS    ?= pv64 hvm64 hvm32 hvm32pae hvm32pse
XTF_RUN      = $(GO) run ./internal/xtf -runvm bin/runvm -xtf $(XTF_DIR) \
	-timeout $(XTF_TIMEOUT) -idle $(XTF_IDLE) $(XTF_ARGS)

xtf-build:
	scripts/xtf-build.sh $(XTF_SRC) $(XTF_DIR)

xtf: bin/runvm xtf-build
	@st=0; for env in $(XTF_ENVS); do $(XTF_RUN) -env $$env || st=1; done; exit $$st

xtf-update: bin/runvm xtf-build
	@st=0; for env in $(XTF_ENVS); do $(XTF_RUN) -env $$env -update || st=1; done; exit $$st

test: deps fmt-check vet staticcheck guest-check godefs-check walkthrough xtf
	$(GO) test -race -count=1 ./...

# The numbers in docs/PERFORMANCE.md. Every benchmark reports its ratio to
# a baseline measured in the same run.
bench:
	$(GO) test -run '^$$' -bench 'Hypercall|BareExit' -benchtime 50000x -count 5 ./vmm/toolstack
	$(GO) test -run '^$$' -bench 'Boot' -benchtime 50x -count 5 ./vmm/toolstack
	$(GO) test -run '^$$' -bench 'SuspendResume|XenstoreRing' -benchtime 200x -count 3 ./vmm/toolstack
	$(GO) test -run '^$$' -bench 'Socket|StoreRead' -benchtime 20000x -count 3 ./vmm/xenstore
	$(GO) test -run '^$$' -bench 'BenchmarkSave$$|SaveThroughput' -benchtime 5x -count 2 ./vmm/toolstack
	$(GO) test -run '^$$' -bench 'BenchmarkRestore' -benchtime 40x -count 2 ./vmm/toolstack
	$(GO) test -run '^$$' -bench 'Blkfront4KiB' -benchtime 20000x -count 3 ./vmm/toolstack
	$(GO) test -run '^$$' -bench 'Blkif4KiB' -benchtime 20000x ./vmm/blkback
	$(GO) test -run '^$$' -bench 'BenchmarkMigrateDowntime|BenchmarkRemus' -benchtime 5x -count 2 ./vmm/toolstack
	$(GO) test -run '^$$' -bench 'HVMPlatformAccess' -benchtime 5000x -count 2 ./vmm/toolstack
	$(GO) test -run '^$$' -bench 'CallbackVector' -count 3 ./vmm/machine

# xenresume's save and restore against QEMU's, interleaved in one process
# tree (docs/PERFORMANCE.md). QEMU is Debian's qemu-system-x86, unpacked
# into .cache/qemu by scripts/qemu-deps.sh when it is not on PATH.
# BENCH_PEERS_ARGS passes more flags (see cmd/benchpeers).
BENCH_PEERS_ARGS ?=
.PHONY: bench-peers
bench-peers:
	@set -e; qemu=$$(scripts/qemu-deps.sh $(CURDIR)/.cache/qemu); \
	env $$qemu $(GO) run ./cmd/benchpeers $(BENCH_PEERS_ARGS)

# Every fuzz target for a while each (make test runs them on their seeds and
# committed corpora only). Whole-file seeds make Go's minimizer crawl, hence
# -fuzzminimizetime.
FUZZTIME ?= 60s
# Every Fuzz function of every package (go test -list), so none is left out.
fuzz:
	@mkdir -p .cache
	@$(GO) test -list '^Fuzz' ./... | awk '/^Fuzz/ { f[n++] = $$1 } /^ok/ { for (i = 0; i < n; i++) print $$2 ":" f[i]; n = 0 }' > .cache/fuzz-targets
	@while IFS=: read -r pkg fn; do \
	  echo "== $$fn ($$pkg)"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 100x $$pkg || exit 1; \
	done < .cache/fuzz-targets

clean:
	rm -rf bin .cache/guest .cache/guest-hvm
