//! The token document stream between piped tools.
