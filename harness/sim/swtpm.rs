//! swtpm (in progress).
