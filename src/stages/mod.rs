//! One module per stage kind: thin glue from validated params to the ML pieces.

pub mod train;
