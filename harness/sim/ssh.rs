//! SSH endpoint (in progress).
