################################################################################
#
# relaybox
#
################################################################################

RELAYBOX_VERSION = 0.1.0
RELAYBOX_SITE = $(BR2_EXTERNAL_RELAYBOX_PATH)/..
RELAYBOX_SITE_METHOD = local
RELAYBOX_LICENSE = GPL-2.0+
RELAYBOX_LICENSE_FILES = README.md
RELAYBOX_CARGO_BUILD_OPTS = -p relaybox --bin relaybox
RELAYBOX_CARGO_INSTALL_OPTS = --path firmware/relaybox

ifeq ($(BR2_PACKAGE_RELAYBOX_DISPATCHER),y)
define RELAYBOX_ENABLE_DISPATCHER
	$(SED) 's/^DISPATCHER=.*/DISPATCHER=yes/' \
		$(TARGET_DIR)/etc/relaybox/defaults/services.conf
endef
RELAYBOX_POST_INSTALL_TARGET_HOOKS += RELAYBOX_ENABLE_DISPATCHER
endif

# The appliance's init scripts and defaults live in rootfs-overlay/ at the
# top of the source tree; the board hooks add board.conf.
define RELAYBOX_INSTALL_OVERLAY
	rsync -a --exclude README.md $(@D)/rootfs-overlay/ $(TARGET_DIR)/
endef
RELAYBOX_POST_INSTALL_TARGET_HOOKS += RELAYBOX_INSTALL_OVERLAY

$(eval $(cargo-package))
