//! Components: apt (private config), Kubernetes release binaries, cache, lock, .deb reader.
