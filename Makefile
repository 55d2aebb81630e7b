# tgtha - Pacemaker OCF agents for HA iSCSI targets on tgt.
#   make deps      install the Debian packages the agents, tests and lab need (root)
#   make test      run every test (namespaced ones need root)
#   make install   agents as ocf:tgtha:*, library beside ocf.py, man pages, tgtha-from-stock ([DESTDIR=...])
#   make man       ocf_tgtha_<agent>(7) from each agent's metadata, in build/man
#   make bench     latency of our agents next to the stock ones, same run
#   make lab       the failover lab: a Pacemaker cluster in namespaces, load, failovers, report
#   make cts       Pacemaker's Cluster Test Suite against the lab's cluster, under initiator load
#   make deb       the Debian package (debian/), in build/deb, checked by lintian

DESTDIR    ?=
OCF_ROOT   ?= /usr/lib/ocf
AGENT_DIR   = $(DESTDIR)$(OCF_ROOT)/resource.d/tgtha
LIB_DIR     = $(DESTDIR)$(OCF_ROOT)/lib/tgtha
MAN_DIR     = $(DESTDIR)/usr/share/man/man7
SBIN_DIR    = $(DESTDIR)/usr/sbin
MAN8_DIR    = $(DESTDIR)/usr/share/man/man8
PYTHON     ?= /usr/bin/python3
AGENTS      = $(notdir $(wildcard agents/*))

DEBIAN_PACKAGES = tgt libiscsi-bin iptables nftables iproute2 procps resource-agents \
                  pacemaker pacemaker-cli-utils corosync crmsh pcs tini python3-matplotlib \
                  python3 python3-lxml python3-filelock python3-iptables python3-pytest libxml2-utils \
                  hyperfine qemu-utils qemu-block-extra iputils-ping strace \
                  qemu-system-x86 linux-image-amd64 open-iscsi busybox-static xfsprogs kmod cpio gcc libc6-dev \
                  udev dmsetup debhelper lintian e2fsprogs

.PHONY: all deps test install uninstall bench clean lab man cts deb

all:
	@echo "targets: deps test install uninstall man bench lab cts deb"

deps:
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES)

test:
	$(PYTHON) -m pytest -v

MAN_PAGES = $(patsubst %,build/man/ocf_tgtha_%.7,$(AGENTS))

man: $(MAN_PAGES)

build/man/ocf_tgtha_%.7: metadata/%.xml metadata/to_man.py
	@mkdir -p build/man
	$(PYTHON) metadata/to_man.py $< > $@.new && mv $@.new $@

install: man
	install -d $(AGENT_DIR) $(LIB_DIR) $(LIB_DIR)/firewall $(LIB_DIR)/metadata $(MAN_DIR) $(SBIN_DIR) $(MAN8_DIR)
	install -m 0755 $(addprefix agents/,$(AGENTS)) $(AGENT_DIR)/
	install -m 0644 lib/tgtha/*.py $(LIB_DIR)/
	install -m 0644 lib/tgtha/firewall/*.py $(LIB_DIR)/firewall/
	install -m 0644 metadata/*.xml $(LIB_DIR)/metadata/
	install -m 0644 $(MAN_PAGES) $(MAN_DIR)/
	install -m 0755 tools/tgtha-from-stock $(SBIN_DIR)/
	install -m 0644 tools/tgtha-from-stock.8 $(MAN8_DIR)/

uninstall:
	rm -rf $(AGENT_DIR) $(LIB_DIR)
	rm -f $(SBIN_DIR)/tgtha-from-stock $(MAN8_DIR)/tgtha-from-stock.8
	rm -f $(patsubst build/man/%,$(MAN_DIR)/%,$(MAN_PAGES))

# From the tracked files only (what a clone has), built where nothing else lives.
DEB_VERSION = $(shell dpkg-parsechangelog -l debian/changelog -S Version)
deb:
	rm -rf build/deb && mkdir -p build/deb/tgtha-$(DEB_VERSION)
	git ls-files -z | tar --null -T - -cf - | tar -x -C build/deb/tgtha-$(DEB_VERSION)
	cd build/deb/tgtha-$(DEB_VERSION) && dpkg-buildpackage -us -uc -b
	lintian --fail-on error build/deb/tgtha_$(DEB_VERSION)_*.changes
	@ls build/deb/*.deb

bench:
	$(PYTHON) bench/agent_latency.py
	$(PYTHON) bench/tgtd_cycles.py

clean:
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf build

# make lab STACK=stock LAB_TARGETS=2 ... : the lab's knobs (lab/lab.py) pass through.
export STACK LAB_LAYOUT LAB_BLOCK LAB_TIME2WAIT LAB_INITIATOR LAB_GUESTS LAB_REPLACEMENT_TIMEOUT LAB_OUTAGE_S LAB_NODES LAB_TARGETS LAB_LUNS LAB_FAILOVERS LAB_SCENARIOS LAB_CONFIG LAB_OUT LAB_IO_GAP_MS LAB_SETTLE_TIMEOUT LAB_INJECT LAB_DISKS LAB_REBOOT_DELAY_S LAB_PORTAL LAB_RESTART_GAPS LAB_PLACEHOLDER LAB_MULTIPATH \
       LAB_WATCH_EXIT LAB_MIGRATE_CONTROL LAB_MONITOR_S LAB_TGTD_MONITOR_S LAB_NODE_ACTION_LIMIT LAB_TOKEN_MS LAB_PREFIX
lab: install
	$(PYTHON) lab/lab.py

# make cts CTS_ITERATIONS=30 CTS_SEED=... CTS_TESTS="..." CTS_ONCE_NODES=2 (lab/pacemaker_cts.py)
export CTS_ITERATIONS CTS_SEED CTS_TESTS CTS_ONCE_NODES
cts: install
	$(PYTHON) lab/pacemaker_cts.py
