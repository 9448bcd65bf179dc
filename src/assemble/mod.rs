//! Assembly: board boot files, rootfs per role, initramfs, generated configs.
