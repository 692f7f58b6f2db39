# tagger build pipeline.
#
#   make run    install what is missing, build, and run the agent
#   make test   the same set-up, then the whole test suite
#   make install-system   a self-contained venv in /opt/tagger, /usr/local/bin/tagger,
#               the systemd unit (uninstall-system removes them)
#   make man    docs/man/*.1 from the click help
#   make test-kernels   the bpf and root tests inside VMs booting Debian's 6.1
#               and 6.12 kernels (KERNELS=6.1 picks one), pure cgroup v2
#   make image  the OCI image localhost/tagger:<version>: a debootstrap root
#               with the wheel, imported by podman (docs/image.md)
#   make image-check   tagger doctor from the image's root (chroot, host /sys
#               and /proc), as the DaemonSet mounts them
#
# Kernel side: vmlinux.h (from this kernel's BTF) -> <probe>.bpf.o -> tagger.bpf.o
# (static link) -> tagger.skel.h, which the cffi extension embeds.  V=1 shows
# the commands.

.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

ifeq ($(V),1)
Q :=
else
Q := @
endif

PYTHON  ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
CLANG   ?= clang
BPFTOOL ?= bpftool
ARCH    := $(shell uname -m | sed 's/x86_64/x86/;s/aarch64/arm64/')

# Debian packages: build (clang..zlib), workloads for tests and benchmarks.
APT_PACKAGES := clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev pkg-config \
                stress-ng fio rt-tests redis-server linux-perf prometheus

BPF_PROBES  := sched blkio cgroup
BPF_OBJS    := $(patsubst %,bpf/%.bpf.o,$(BPF_PROBES))
BPF_HEADERS := $(filter-out bpf/vmlinux.h %.skel.h,$(wildcard bpf/*.h))
NATIVE_SRC  := tagger/native/build.py tagger/native/native.c tagger/native/native.h tagger/native/prog_stats.h

# The kernel matrix: qemu (TCG: KVM does not work on these machines), kmod for
# virtme-ng's depmod, busybox for its guest init; virtme-ng boots a kernel
# over this machine's own filesystem.
VM_APT_PACKAGES := qemu-system-x86 kmod busybox-static
VIRTME_NG       := virtme-ng==1.42
KERNELS_DIR     := .kernels
KERNELS         ?=

.PHONY: help deps venv bpf install run test test-kernels bench bench-native clean install-system uninstall-system man \
        image image-check

help:
	@echo "make run     set up everything missing, then run tagger"
	@echo "make test    set up everything missing, then run the test suite"
	@echo "make test-kernels  the bpf and root tests in VMs on Debian's 6.1 and 6.12"
	@echo "             kernels, pure cgroup v2 (KERNELS=6.1 picks one; ~10 min each)"
	@echo "make install-system  tagger on PATH ($(PREFIX)/bin) from a venv in $(TAGGER_HOME),"
	@echo "             and the systemd unit in $(UNITDIR); uninstall-system removes them"
	@echo "make man     regenerate docs/man/*.1 from the click help"
	@echo "make image   the OCI image $(IMAGE) (debootstrap + the wheel, podman import;"
	@echo "             the Debian root is cached in $(IMAGE_DIR)/: a rebuild reinstalls the wheel)"
	@echo "make image-check  tagger doctor from the image's root, chrooted over the host's"
	@echo "             /sys and /proc (ARGS=... runs another tagger command)"
	@echo "make bench   run the benchmarks (root, real kernel)"
	@echo "make bpf     build the BPF objects and skeleton only"
	@echo "make clean   remove build products"

# --- system packages ---------------------------------------------------------
# $(call apt_install,PACKAGES): apt-get install those of PACKAGES not installed.
apt_install = missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

deps: .stamp-apt
.stamp-apt: Makefile
	$(Q)$(call apt_install,$(APT_PACKAGES))
	$(Q)touch $@

# --- kernel side ---------------------------------------------------------------
bpf: bpf/tagger.skel.h

bpf/vmlinux.h: | .stamp-apt
	$(Q)echo "  BTF     $@"
	$(Q)$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@

# -mcpu=v3: 32-bit ALU and jumps (kernels 5.1+; we need 5.15), so a 32-bit
# value needs no shift pair to clear its upper half before each compare.
# sched_switch's run costs 4-12 ns less for it (bench_bpf.py's storm, paired).
BPF_CFLAGS  := -g -O2 -Wall -mcpu=v3 -target bpf -D__TARGET_ARCH_$(ARCH) -Ibpf

# The Makefile too: a checkout built before a change of BPF_CFLAGS rebuilds.
bpf/%.bpf.o: bpf/%.bpf.c $(BPF_HEADERS) bpf/vmlinux.h Makefile
	$(Q)echo "  CLANG   $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -c $< -o $@

bpf/tagger.bpf.o: $(BPF_OBJS)
	$(Q)echo "  LINK    $@"
	$(Q)$(BPFTOOL) gen object $@ $^

bpf/tagger.skel.h: bpf/tagger.bpf.o
	$(Q)echo "  SKEL    $@"
	$(Q)$(BPFTOOL) gen skeleton $< name tagger_bpf > $@

# Empty programs on the same hooks: the benchmarks' baseline (benchmarks/baseline,
# an extension of their own: tagger's does not carry them).
bpf/empty.skel.h: bpf/empty.bpf.o
	$(Q)echo "  SKEL    $@"
	$(Q)$(BPFTOOL) gen skeleton $< name empty_bpf > $@

# --- Python side ----------------------------------------------------------------
venv: $(VPY)
$(VPY): | .stamp-apt
	$(Q)$(PYTHON) -m venv $(VENV)
	$(Q)$(VPY) -m pip install -q --upgrade pip setuptools wheel

install: .stamp-install
.stamp-install: $(VPY) bpf/tagger.skel.h pyproject.toml setup.py $(NATIVE_SRC)
	$(Q)echo "  PIP     tagger (editable, with tests)"
	$(Q)$(VPY) -m pip install -q -e '.[test,bench]'
	$(Q)touch $@

run: install
	$(VENV)/bin/tagger run $(ARGS)

test: install
	$(VPY) -m pytest -ra $(PYTEST_ARGS)

.stamp-vm: Makefile | $(VPY)
	$(Q)$(call apt_install,$(VM_APT_PACKAGES))
	$(Q)$(VPY) -m pip install -q '$(VIRTME_NG)'
	$(Q)touch $@

test-kernels: install .stamp-vm
	$(Q)tests/kernels/fetch.sh $(KERNELS_DIR)
	$(Q)$(VPY) tests/kernels/run.py --kernels $(KERNELS_DIR) $(KERNELS)

# The benchmarks' baseline extension (empty BPF programs), never installed.
BENCH_NATIVE_SRC := benchmarks/baseline/build.py benchmarks/baseline/empty.c benchmarks/baseline/empty.h \
                    tagger/native/prog_stats.h tagger/native/native.h
bench-native: .stamp-bench-native
.stamp-bench-native: bpf/empty.skel.h $(BENCH_NATIVE_SRC) | $(VPY)
	$(Q)echo "  CFFI    benchmarks/baseline/_empty"
	$(Q)$(VPY) benchmarks/baseline/build.py
	$(Q)touch $@

bench: install bench-native
	$(Q)for b in benchmarks/bench_*.py; do echo "== $$b"; $(VPY) $$b || exit 1; done

# --- system install ------------------------------------------------------------
# A venv of its own (not the checkout's .venv: the unit's ProtectHome=yes and
# PrivateTmp=yes hide /home, /root and /tmp), holding the built wheel with its
# native module, not an editable install.  The venv is not relocatable, so
# there is no DESTDIR: PREFIX, TAGGER_HOME and UNITDIR say where things go (the
# test installs into a temp tree with them).
PREFIX      ?= /usr/local
TAGGER_HOME ?= /opt/tagger
UNITDIR     ?= /etc/systemd/system
WHEEL_DIR   := build/wheel

install-system: install
	$(Q)rm -rf $(WHEEL_DIR)
	$(Q)echo "  WHEEL   $(WHEEL_DIR)"
	$(Q)$(VPY) -m pip wheel -q --no-deps --no-build-isolation -w $(WHEEL_DIR) . 2>/dev/null
	$(Q)echo "  VENV    $(TAGGER_HOME)"
	$(Q)$(PYTHON) -m venv --clear $(TAGGER_HOME)
	$(Q)$(TAGGER_HOME)/bin/python -m pip install -q --disable-pip-version-check $(WHEEL_DIR)/tagger-*.whl
	$(Q)install -d $(PREFIX)/bin $(UNITDIR)
	$(Q)ln -sfn $(TAGGER_HOME)/bin/tagger $(PREFIX)/bin/tagger
	$(Q)install -d $(PREFIX)/share/man/man1 && install -m 0644 docs/man/*.1 $(PREFIX)/share/man/man1/
	$(Q)echo "  UNIT    $(UNITDIR)/tagger.service"
	$(Q)sed 's|/usr/local/bin/tagger |$(PREFIX)/bin/tagger |' deploy/tagger.service > $(UNITDIR)/tagger.service
	$(Q)chmod 0644 $(UNITDIR)/tagger.service
	$(Q)if [ "$(UNITDIR)" = /etc/systemd/system ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	$(Q)echo "tagger is $(PREFIX)/bin/tagger; start the service: systemctl enable --now tagger"

uninstall-system:
	$(Q)if [ -d /run/systemd/system ] && [ "$(UNITDIR)" = /etc/systemd/system ]; then \
	  systemctl disable --now tagger 2>/dev/null || true; fi
	$(Q)rm -f $(UNITDIR)/tagger.service
	$(Q)if [ "$$(readlink $(PREFIX)/bin/tagger)" = "$(TAGGER_HOME)/bin/tagger" ]; then rm -f $(PREFIX)/bin/tagger; fi
	$(Q)for m in docs/man/*.1; do rm -f $(PREFIX)/share/man/man1/$${m##*/}; done
	$(Q)rm -rf $(TAGGER_HOME)
	$(Q)if [ "$(UNITDIR)" = /etc/systemd/system ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# Manual pages from the click help (one per command and subcommand); click-man
# comes with the test extras.
man: install
	$(Q)rm -f docs/man/*.1
	$(Q)$(VPY) tools/gen_man.py docs/man

# --- OCI image -----------------------------------------------------------------
# No registry base image is reachable, so the image is built from Debian
# packages: a debootstrap root (cached in $(IMAGE_DIR)/) with the wheel in a venv,
# imported by podman.  Its tools are installed only by `make image`.  The root's
# own packages are chosen by deploy/image/build.sh (python3 and what the native
# extension links).
IMAGE_APT_PACKAGES := debootstrap podman
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE         ?= localhost/tagger:$(IMAGE_VERSION)
IMAGE_DIR     := .image

.stamp-image-apt: Makefile
	$(Q)$(call apt_install,$(IMAGE_APT_PACKAGES))
	$(Q)touch $@

image: install .stamp-image-apt
	$(Q)deploy/image/build.sh $(IMAGE_DIR) $(IMAGE) $(VPY)

image-check: .stamp-image-apt
	$(Q)deploy/image/check.sh $(IMAGE) $(if $(ARGS),$(ARGS),doctor)

clean:
	rm -rf build *.egg-info tagger/native/_native*.so tagger/native/_native.c benchmarks/baseline/_empty*.so \
	       bpf/*.o bpf/*.skel.h bpf/vmlinux.h .stamp-install .stamp-bench-native
