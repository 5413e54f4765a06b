################################################################################
#
# relaybox
#
################################################################################

# The source is the committed HEAD of the relaybox checkout that holds this
# BR2_EXTERNAL tree, fetched with git like any other git package: the
# download is a clean tarball of that commit (no target/, no untracked
# files), and Buildroot's cargo download step vendors the crates of
# Cargo.lock into it, so that the build runs --offline. To build
# uncommitted changes, see buildroot/README.md (RELAYBOX_OVERRIDE_SRCDIR).
RELAYBOX_SITE = $(abspath $(BR2_EXTERNAL_RELAYBOX_PATH)/..)
RELAYBOX_SITE_METHOD = git
RELAYBOX_VERSION := $(shell git -C $(BR2_EXTERNAL_RELAYBOX_PATH) rev-parse --verify -q HEAD)
ifeq ($(BR2_PACKAGE_RELAYBOX)$(RELAYBOX_VERSION)$(RELAYBOX_OVERRIDE_SRCDIR),y)
$(error relaybox: $(RELAYBOX_SITE) is not a git checkout; set RELAYBOX_OVERRIDE_SRCDIR (buildroot/README.md))
endif
RELAYBOX_LICENSE = GPL-2.0+
RELAYBOX_LICENSE_FILES = COPYING
# The binary's crate: cargo builds and installs firmware/relaybox of the
# workspace (the lock file and the vendored crates are the workspace's).
RELAYBOX_SUBDIR = firmware/relaybox
# relaybox's init scripts replace busybox's /etc/inittab: install after it.
RELAYBOX_DEPENDENCIES = $(if $(BR2_PACKAGE_BUSYBOX),busybox)
# A working tree given as RELAYBOX_OVERRIDE_SRCDIR: leave its build outputs.
RELAYBOX_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude /target --exclude /buildroot-output

# Cargo features: the relay always, the rest as configured.
RELAYBOX_FEATURES = relay
ifeq ($(BR2_PACKAGE_RELAYBOX_WEB),y)
RELAYBOX_FEATURES += web
endif
ifeq ($(BR2_PACKAGE_RELAYBOX_CLOCK),y)
RELAYBOX_FEATURES += clock
endif
ifeq ($(BR2_PACKAGE_RELAYBOX_DISPATCHER),y)
RELAYBOX_FEATURES += dispatcher
endif
ifeq ($(BR2_PACKAGE_RELAYBOX_ACCOUNTING_SQL),y)
RELAYBOX_FEATURES += accounting-sql
endif
RELAYBOX_CARGO_FEATURES = \
	--no-default-features \
	--features $(subst $(space),$(comma),$(strip $(RELAYBOX_FEATURES)))
RELAYBOX_CARGO_BUILD_OPTS = --bin relaybox $(RELAYBOX_CARGO_FEATURES)
# The workspace's release profile (Cargo.toml: opt-level 3, LTO, one
# codegen unit), as `cargo xtask` builds it, over the cargo
# infrastructure's settings from BR2_OPTIMIZE_* and BR2_ENABLE_LTO
# (opt-level 2, no LTO, 16 units by default: a fifth bigger).
RELAYBOX_CARGO_ENV = \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=3 \
	CARGO_PROFILE_RELEASE_LTO=true \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
# `cargo install` builds again unless its features are the build's.
RELAYBOX_CARGO_INSTALL_OPTS = $(RELAYBOX_CARGO_FEATURES)

# The appliance's init scripts and defaults (rootfs-overlay/ at the top
# of the source); the board's post-build script adds board.conf.
define RELAYBOX_INSTALL_OVERLAY
	rsync -a --exclude README.md $(@D)/rootfs-overlay/ $(TARGET_DIR)/
endef
RELAYBOX_POST_INSTALL_TARGET_HOOKS += RELAYBOX_INSTALL_OVERLAY

# The key whose signed bundles the box installs (/etc/relaybox/update.pub,
# read by `relaybox update`); post-build.sh writes the release file next
# to it. Required: a box without it could never be updated.
RELAYBOX_UPDATE_KEY = $(call qstrip,$(BR2_PACKAGE_RELAYBOX_UPDATE_KEY))
ifeq ($(BR_BUILDING),y)
ifeq ($(BR2_PACKAGE_RELAYBOX),y)
ifeq ($(RELAYBOX_UPDATE_KEY),)
$(error relaybox: set BR2_PACKAGE_RELAYBOX_UPDATE_KEY to the update public key (buildroot/README.md))
endif
endif
endif
define RELAYBOX_INSTALL_UPDATE_KEY
	grep -q '^-----BEGIN PUBLIC KEY-----' '$(RELAYBOX_UPDATE_KEY)' || { \
		echo 'relaybox: BR2_PACKAGE_RELAYBOX_UPDATE_KEY ($(RELAYBOX_UPDATE_KEY)) is not a PEM public key' >&2; \
		exit 1; }
	$(INSTALL) -D -m 0644 '$(RELAYBOX_UPDATE_KEY)' $(TARGET_DIR)/etc/relaybox/update.pub
endef
RELAYBOX_POST_INSTALL_TARGET_HOOKS += RELAYBOX_INSTALL_UPDATE_KEY

# EFI boards: systemd-boot from a file given by the operator (Buildroot
# builds it only with systemd as init); post-image.sh puts it on the EFI
# system partition.
RELAYBOX_SYSTEMD_BOOT_EFI = $(call qstrip,$(BR2_PACKAGE_RELAYBOX_SYSTEMD_BOOT_EFI))
ifneq ($(RELAYBOX_SYSTEMD_BOOT_EFI),)
RELAYBOX_INSTALL_IMAGES = YES
define RELAYBOX_INSTALL_IMAGES_CMDS
	$(INSTALL) -D -m 0644 '$(RELAYBOX_SYSTEMD_BOOT_EFI)' \
		$(BINARIES_DIR)/relaybox-systemd-boot.efi
endef
endif

ifeq ($(BR2_PACKAGE_RELAYBOX_DISPATCHER),y)
define RELAYBOX_ENABLE_DISPATCHER
	$(SED) 's/^DISPATCHER=.*/DISPATCHER=yes/' \
		$(TARGET_DIR)/etc/relaybox/defaults/services.conf
endef
RELAYBOX_POST_INSTALL_TARGET_HOOKS += RELAYBOX_ENABLE_DISPATCHER
endif

$(eval $(cargo-package))
